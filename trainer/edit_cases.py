"""Knowledge-edit cases: the canonical JSON-lines format and converters from CounterFact and zsRE.

Canonical record (one JSON object a line, plain or gzipped):
`{id, fact?, question, target_new, target_old?, subject?, paraphrases: [..], neighbors: [{question, answer}],
portability?: {question, answer}}`. `fact` defaults to the question followed by the new answer.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from indexer.edit_memory import MAX_TEXT_CHARS
from indexer.records import is_blank, valid_unicode
from trainer.qa_data import jsonl_lines

FORMATS = ("canonical", "counterfact", "zsre")


@dataclass(frozen=True)
class Probe:
    """A question with the answer expected of it."""

    question: str
    answer: str


@dataclass(frozen=True)
class EditCase:
    """One edit and the questions that test it: its own, paraphrases, unrelated neighbours, a portability probe."""

    id: str
    question: str
    target_new: str
    fact: str = ""
    target_old: str | None = None
    subject: str | None = None
    paraphrases: list[str] = field(default_factory=list)
    neighbors: list[Probe] = field(default_factory=list)
    portability: Probe | None = None

    def __post_init__(self) -> None:
        if not self.fact:
            object.__setattr__(self, "fact", stated_fact(self.question, self.target_new))


def stated_fact(question: str, answer: str) -> str:
    """A fact sentence from a question (or a cloze prompt) and its answer."""
    return f"{question.strip()} {answer.strip()}."


def _canonical(raw: dict[str, Any], n: int) -> EditCase:
    portability, paraphrases = raw.get("portability"), raw.get("paraphrases") or []
    if not isinstance(paraphrases, list):  # list() of a string would make each letter a paraphrase
        raise ValueError(f"paraphrases must be a list of strings, got a {type(paraphrases).__name__}")
    return EditCase(
        id=str(raw.get("id", n)), question=raw["question"], target_new=raw["target_new"], fact=raw.get("fact") or "",
        target_old=raw.get("target_old"), subject=raw.get("subject"), paraphrases=paraphrases,
        neighbors=[Probe(p["question"], p["answer"]) for p in raw.get("neighbors") or []],
        portability=Probe(portability["question"], portability["answer"]) if portability else None,
    )


def _counterfact(raw: dict[str, Any], n: int) -> EditCase:
    return EditCase(
        id=str(raw["case_id"]), question=raw["prompt"], target_new=raw["target_new"], target_old=raw.get("ground_truth"),
        subject=raw.get("subject"), paraphrases=[raw["rephrase_prompt"]],
        neighbors=[Probe(raw["locality_prompt"], raw["locality_ground_truth"])],
    )


def _zsre(raw: dict[str, Any], n: int) -> EditCase:
    # zsRE's locality questions are NQ questions, spelled "nq question: who ...".
    loc = raw["loc"].removeprefix("nq question: ")
    answers = raw.get("answers") or [raw.get("pred")]
    return EditCase(
        id=str(raw.get("case_id", n)), question=raw["src"], target_new=raw["alt"], target_old=answers[0],
        subject=raw.get("subject"), paraphrases=[raw["rephrase"]], neighbors=[Probe(loc, raw["loc_ans"])],
    )


def _check_case(case: EditCase) -> None:
    """ValueError naming the first field of `case` that is not text where text is needed: checked as the file is read,
    so that a bad record is named by its line (and --on-error skip can leave it out), not met halfway through a run."""
    if not all(isinstance(t, str) and not is_blank(t) for t in (case.question, case.target_new)):
        raise ValueError("question and target_new must be non-empty strings")
    texts = {"fact": [case.fact], "paraphrases": case.paraphrases,
             "neighbors": [t for probe in case.neighbors for t in (probe.question, probe.answer)],
             "portability": [case.portability.question, case.portability.answer] if case.portability else []}
    for name, values in texts.items():
        if not all(isinstance(t, str) for t in values):
            raise ValueError(f"{name} must be text, got {values!r:.80}")
        if any(is_blank(t) for t in values):  # each is asked, is an answer to check, or is the edit's fact
            raise ValueError(f"{name} must not hold blank text, got {values!r:.80}")
    for name, value in (("subject", case.subject), ("target_old", case.target_old)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r:.80}")
    if case.subject is not None and is_blank(case.subject):
        raise ValueError("subject must be left out or name something, got blank text")
    for name, values in (("id", [case.id]), ("question", [case.question]), ("target_new", [case.target_new]), *texts.items(),
                         ("subject", [case.subject or ""]), ("target_old", [case.target_old or ""])):
        for value in values:
            valid_unicode(value, name)
    for name, value in (("question", case.question), ("target_new", case.target_new), ("fact", case.fact), ("subject", case.subject)):
        if value is not None and len(value) > MAX_TEXT_CHARS:  # what the edit memory takes
            raise ValueError(f"{name} is {len(value)} characters; an edit's limit is {MAX_TEXT_CHARS}")


def subject_as(text: str, subject: str | None, mark: str) -> str | None:
    """`text` with its first mention of `subject` replaced by `mark`; None when it does not mention it."""
    return text.replace(subject, mark, 1) if subject and subject in text else None


def parse_fold(text: str) -> tuple[int, int]:
    """"I/N" -> (I, N): fold I (counted from 0) of N. Raises ValueError naming what is wrong."""
    head, slash, tail = text.partition("/")
    try:
        fold = int(head), int(tail)
    except ValueError:
        fold = (-1, 0)
    if not slash or not 0 <= fold[0] < fold[1]:
        raise ValueError(f"a fold is I/N with 0 <= I < N (e.g. 1/2), got {text!r}")
    return fold


def in_fold(case: EditCase, fold: tuple[int, int]) -> bool:
    """Whether a case lies in fold I of N, by a hash of its id: the same split on every run and machine, so a
    model trained on one fold of a file can be measured on the others."""
    index, folds = fold
    return int(hashlib.sha1(case.id.encode("utf-8")).hexdigest(), 16) % folds == index


CONVERTERS: dict[str, Callable[[dict[str, Any], int], EditCase]] = {"canonical": _canonical, "counterfact": _counterfact, "zsre": _zsre}


def guess_format(path: str | Path) -> str:
    """The format of an edit file, from the fields of its first record (CounterFact's `prompt`, zsRE's `src`),
    else from its name (counterfact*, zsre*); canonical when neither tells (a pipe: give --format)."""
    path = Path(path)
    try:  # not a pipe's first line: it can be read only once, and read_cases reads it all
        first = json.loads(next((line for _, line in jsonl_lines(path, "edit file")), "{}")) if path.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError):  # a missing file or bad JSON: read_cases reports it
        first = None
    if isinstance(first, dict):
        for fmt, key in (("canonical", "question"), ("counterfact", "prompt"), ("zsre", "src")):
            if key in first:
                return fmt
    name = path.name.lower()
    return "counterfact" if name.startswith("counterfact") else "zsre" if name.startswith("zsre") else "canonical"


def read_cases(path: str | Path, fmt: str | None = None, on_error: str = "stop", advice: str = "") -> list[EditCase]:
    """All cases of an edit file. A malformed line raises ValueError naming file:line and what is wrong, then
    `advice` (a command's way around it: "--on-error skip leaves such records out"), or with on_error="skip" is left
    out with a warning on stderr (zsre-1k has two records without a new answer)."""
    path = Path(path)
    unread = fmt is None and not path.is_file()  # a pipe: its format was guessed from its name alone
    fmt = fmt or guess_format(path)
    if on_error not in ("stop", "skip"):
        raise ValueError(f"on_error must be stop or skip, got {on_error!r}")
    if fmt not in CONVERTERS:
        raise ValueError(f"unknown edit file format {fmt!r}: choose one of {', '.join(FORMATS)}")
    cases = []
    for n, line in jsonl_lines(path, "edit file"):
        try:
            raw = json.loads(line)
            if not isinstance(raw, dict):  # temporal-ike.jsonl.gz, say: a list of dated answers per line
                raise ValueError(f"a JSON {type(raw).__name__}, not an object: not an edit case of any format ({', '.join(FORMATS)})")
            case = CONVERTERS[fmt](raw, n)
            _check_case(case)
            cases.append(case)
        except (json.JSONDecodeError, KeyError, ValueError, TypeError, AttributeError) as exc:
            what = f"missing field {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
            message = f"{path}:{n}: bad {fmt} edit record ({what}{'; a pipe is read as canonical unless --format says otherwise' if unread else ''})"
            if on_error == "stop":
                raise ValueError(f"{message}; {advice}" if advice else message) from exc
            print(f"skipped {message}", file=sys.stderr)
    if not cases:
        raise ValueError(f"{path}: no edit records")
    return cases
