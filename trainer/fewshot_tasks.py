"""Few-shot tasks: what a task's examples look like to the reader, and where its records come from.

A task is classification (each record's target maps to label words; the reader ranks the label words
by likelihood), multiple choice (each record brings its own choices, as COPA does; ranked the same
way) or question answering (the target is a list of answers; the reader generates, optionally with
retrieved passages). Built in: the FewGLUE sets in `../shared/data/fewshot` (superglue-boolq, -rte,
-cb, -copa, -wic), sst2, trec, and `nq-open` (few-shot open-domain QA: the shots are a seeded sample
of nq-open-train, the val split is the nq-open-test questions with gold passages in the corpus).

A user's own task is a folder (`--task DIR`):

    DIR/task.json    {"name": "my-task",
                      "template": "Review: {text}\\nIs this review positive or negative?",
                      "target": "label",
                      "label_words": {"0": "negative", "1": "positive"},     # omit for QA
                      "choices": ["{option_a}", "{option_b}"]}              # optional: multiple choice
    DIR/train.jsonl  one JSON record a line, with the fields the template names and the target field
    DIR/val.jsonl    the same (optional; needed by `rag-eval fewshot --split val`)

`template` is a Python format string over a record's fields. With `label_words`, a record's target
(a string, number or boolean; JSON true/false are the keys "true"/"false") names its label. With
`choices` (templates over the record's fields), the target is the index of the right choice. With
neither, it is QA: the target is an answer or a list of answers, scored with EM/F1 (records whose
only answer is "" are skipped); `"retrieval":
true` in task.json puts retrieved passages in the prompt by default. A malformed record stops with
`file:line` and what is wrong.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.qa_data import jsonl_lines
from trainer.shared_data import SHARED_DATA

FEWSHOT_ROOT = SHARED_DATA / "fewshot"
QA_ROOT = SHARED_DATA / "qa"


@dataclass(frozen=True)
class Example:
    """One record as the reader sees it: the rendered input, the texts to rank (None for QA), and the gold."""

    text: str
    choices: list[str] | None  # label words or the record's own choices; None: answer by generation
    label: int | None  # index of the right choice
    answers: list[str]  # QA: the gold answers; classification: the right choice's text

    @property
    def target(self) -> str:
        """The text the reader should produce: the right choice, or the first gold answer."""
        return self.answers[0]


@dataclass(frozen=True)
class FewShotTask:
    """A task spec: how records become examples, which files hold them, and whether QA retrieves passages."""

    name: str
    template: str
    target: str  # field of the record holding the label, the choice index or the answers
    label_words: dict[str, str] | None = None
    choices: list[str] | None = None  # per-record choice templates (multiple choice)
    splits: dict[str, list[Path]] = field(default_factory=dict)  # split name -> files read together
    retrieval: bool = False  # QA: passages in the prompt by default
    instruction: str = "Reply with only the answer."
    val_requires: str | None = None  # a field the val records must have (nq-open: gold_ids, the answer is in the corpus)

    @property
    def is_qa(self) -> bool:
        return self.label_words is None and self.choices is None

    def example(self, record: dict[str, Any], where: str = "record") -> Example:
        """The example for one record; ValueError naming `where` (file:line) when a field is missing or wrong."""
        try:
            text = self.template.format(**record)
            target = record[self.target]
            if self.label_words is not None:
                words = list(self.label_words.values())
                key = _label_key(target)
                if key not in self.label_words:
                    raise ValueError(f"label {target!r} is not one of {sorted(self.label_words)}")
                return Example(text, words, words.index(self.label_words[key]), [self.label_words[key]])
            if self.choices is not None:
                options = [c.format(**record) for c in self.choices]
                if not isinstance(target, int) or isinstance(target, bool) or not 0 <= target < len(options):
                    raise ValueError(f"target {target!r} must be a choice index from 0 to {len(options) - 1}")
                return Example(text, options, target, [options[target]])
            answers = [target] if isinstance(target, str) else target
            if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers) or not any(a.strip() for a in answers):
                raise ValueError("the target must be an answer or a non-empty list of answers")
            return Example(text, None, None, [a for a in answers if a.strip()])
        except KeyError as exc:
            raise ValueError(f"{where}: missing field {exc.args[0]!r} (task {self.name})") from exc
        except (ValueError, IndexError, TypeError, AttributeError) as exc:
            raise ValueError(f"{where}: {exc} (task {self.name})") from exc

    def load(self, split: str) -> list[Example]:
        """Every example of a split, in file order."""
        if split not in self.splits:
            raise ValueError(f"task {self.name} has no split {split!r}; it has {', '.join(self.splits) or 'none'}")
        examples = []
        for path in self.splits[split]:
            for where, record in read_records(path):
                if split == "val" and self.val_requires is not None and not record.get(self.val_requires):
                    continue
                if self.is_qa and _unanswered(record.get(self.target)):
                    continue  # nq-open-train has a few records whose only answer is ""
                examples.append(self.example(record, where))
        if not examples:
            raise ValueError(f"task {self.name}: split {split!r} is empty")
        return examples

    def shots(self, n: int, seed: int, option: str = "--shots") -> list[Example]:
        """A seeded sample of `n` training examples: the few shots a run trains on (or puts in the prompt). `option`:
        the command-line option that asked for `n`, which an error names."""
        pool = self.load("train")
        if n > len(pool):
            raise ValueError(f"{option} {n}: task {self.name} has only {len(pool)} training examples")
        return random.Random(seed).sample(pool, n)


def _unanswered(target: Any) -> bool:
    return target == "" or (isinstance(target, list) and bool(target) and all(a == "" for a in target))


def _label_key(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


def read_records(path: Path, what: str = "task file") -> list[tuple[str, dict[str, Any]]]:
    """(file:line, record) for every non-blank line of a .jsonl or .jsonl.gz file; ValueError naming file:line for a
    line that is not a JSON object (and naming `what` for a file that cannot be read)."""
    records = []
    for n, line in jsonl_lines(path, what):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{n}: a record must be a JSON object")
        records.append((f"{path}:{n}", record))
    return records


def _fewglue(name: str, template: str, label_words: dict[str, str] | None = None, choices: list[str] | None = None) -> FewShotTask:
    folder = FEWSHOT_ROOT / f"superglue-{name}"
    # FewGLUE's 32 training records plus its 32 dev32 records: 64 to sample shots from; val is SuperGLUE's validation set.
    splits = {"train": [folder / "train.jsonl.gz", folder / "dev32.jsonl.gz"], "val": [folder / "val.jsonl.gz"]}
    return FewShotTask(f"superglue-{name}", template, "label", label_words, choices, splits)


YES_NO = {"true": "yes", "false": "no"}
BUILTIN_TASKS: dict[str, FewShotTask] = {t.name: t for t in (
    _fewglue("boolq", "{passage}\nQuestion: {question}?\nAnswer yes or no.", YES_NO),
    _fewglue("rte", "Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise imply the hypothesis? Answer yes or no.",
             {"entailment": "yes", "not_entailment": "no"}),
    _fewglue("cb", "Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise imply the hypothesis? Answer yes, no or maybe.",
             {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}),
    _fewglue("copa", "Premise: {premise}\nWhich is the more likely {question}? Reply with that sentence.",
             choices=["{choice1}", "{choice2}"]),
    _fewglue("wic", "Sentence 1: {sentence1}\nSentence 2: {sentence2}\n"
                    "Is the word \"{word}\" used with the same meaning in both sentences? Answer yes or no.", YES_NO),
    FewShotTask("sst2", "Review: {sentence}\nIs this review positive or negative?", "label", {"0": "negative", "1": "positive"},
                splits={"train": [FEWSHOT_ROOT / "sst2" / "train.jsonl.gz"], "val": [FEWSHOT_ROOT / "sst2" / "dev.jsonl.gz"]}),
    FewShotTask("trec", "Question: {question}\nWhat kind of answer does this question ask for: "
                        "abbreviation, description, entity, person, location or number?", "label",
                {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "person", "LOC": "location", "NUM": "number"},
                splits={"train": [FEWSHOT_ROOT / "trec" / "train.jsonl.gz"], "val": [FEWSHOT_ROOT / "trec" / "test.jsonl.gz"]}),
    FewShotTask("nq-open", "{question}", "answers", retrieval=True,
                instruction="Reply with only the answer: a short phrase, not a sentence.", val_requires="gold_ids",
                splits={"train": [QA_ROOT / "nq-open-train.jsonl.gz"], "val": [QA_ROOT / "nq-open-test.jsonl.gz"]}),
)}


def load_task(name_or_dir: str | Path) -> FewShotTask:
    """A built-in task by name, or a user's task folder (task.json, train.jsonl, val.jsonl: see the module docstring)."""
    if str(name_or_dir) in BUILTIN_TASKS:
        return BUILTIN_TASKS[str(name_or_dir)]
    folder = Path(name_or_dir)
    spec_file = folder / "task.json"
    if not spec_file.is_file():
        raise ValueError(f"unknown task {name_or_dir!r}: give one of {', '.join(BUILTIN_TASKS)} or a folder with task.json")
    try:
        spec = json.loads(spec_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{spec_file}:{exc.lineno}: not JSON ({exc.msg})") from exc
    known = {"name", "template", "target", "label_words", "choices", "retrieval", "instruction"}
    if not isinstance(spec, dict) or not isinstance(spec.get("template"), str) or not isinstance(spec.get("target"), str):
        raise ValueError(f"{spec_file}: needs \"template\" (a format string) and \"target\" (a field name)")
    if set(spec) - known:
        raise ValueError(f"{spec_file}: unknown keys {sorted(set(spec) - known)}; known: {sorted(known)}")
    if spec.get("label_words") is not None and spec.get("choices") is not None:
        raise ValueError(f"{spec_file}: give label_words (classification) or choices (multiple choice), not both")
    words = spec.get("label_words")
    if words is not None and (not isinstance(words, dict) or len(words) < 2 or not all(isinstance(w, str) and w.strip() for w in words.values())):
        raise ValueError(f"{spec_file}: label_words must map at least two labels to non-empty words")
    if words is not None and len({w.strip() for w in words.values()}) < len(words):  # labels sharing a word cannot be told apart
        raise ValueError(f"{spec_file}: label_words must map each label to a different word, got {words!r:.200}")
    choices = spec.get("choices")
    if choices is not None and (not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices)):
        raise ValueError(f"{spec_file}: choices must be a list of at least two non-empty templates")
    if choices is not None and len(set(choices)) < len(choices):
        raise ValueError(f"{spec_file}: choices must be different templates, got {choices!r:.200}")
    retrieval, instruction = spec.get("retrieval"), spec.get("instruction")
    if retrieval is not None and not isinstance(retrieval, bool):  # "retrieval": "no" would read as true
        raise ValueError(f"{spec_file}: retrieval must be true or false, got {retrieval!r:.40}")
    if instruction is not None and not isinstance(instruction, str):
        raise ValueError(f"{spec_file}: instruction must be a string, got {instruction!r:.40}")
    splits = {s: [folder / f"{s}.jsonl"] for s in ("train", "val") if (folder / f"{s}.jsonl").is_file()}
    extra = {k: spec[k] for k in ("label_words", "choices", "retrieval", "instruction") if spec.get(k) is not None}
    return FewShotTask(spec.get("name") or folder.name, spec["template"], spec["target"], splits=splits, **extra)
