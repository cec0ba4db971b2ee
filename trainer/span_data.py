"""Training data of the extractive span reader: made once with the index, then read by training anywhere.

Each training question becomes an example: a positive passage (of a `gold_ids` document, the answer
located in it, preferably the one our retriever finds) and a few negatives drawn from its top retrieved
passages that do not contain the answer. The training files are split first: `dev_size` questions
(shared equally among the files, seeded) are held out, never trained on, and stored with their top
retrieved passages, so settings (k at inference, scoring) can be chosen without the index.

The data file is gzipped JSON lines: a header (settings, files, counts), then one line per training
example (`{"train": ...}`) and per dev question (`{"dev": ...}`). It holds passage texts, so training
needs neither the index nor FAISS and tantivy: it can run on a machine that has only torch.

Run: `python -m trainer.span_data --train A.jsonl.gz,B.jsonl.gz --index DIR --out data.jsonl.gz [...]`
"""
from __future__ import annotations

import argparse
import gzip
import itertools
import json
import random
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from tqdm.auto import tqdm

from indexer.chunking import chunk_document
from indexer.records import Document, SearchHit
from rag.command_line import check_counts, check_out_file, run_command, typed_command
from trainer.qa_data import ContextPassage, QARecord, read_qa, split_train_dev
from trainer.qa_metrics import contains_answer

if TYPE_CHECKING:  # the index is only needed to make the data; training imports this module without FAISS
    from indexer.index import Index

FORMAT = "span-data"
FORMAT_VERSION = 1
# indexer.index.MODES, written out: importing indexer.index loads FAISS, which span-reader training must not need.
SEARCH_MODES = ("dense", "sparse", "hybrid")


@dataclass(frozen=True)
class SpanExample:
    """A question, its positive passage with the answer at text[answer_start:answer_end], and negatives."""

    question: str
    positive: ContextPassage
    answer_start: int
    answer_end: int
    negatives: tuple[ContextPassage, ...]

    def to_json(self) -> dict[str, Any]:
        return {"question": self.question, "positive": [self.positive.title, self.positive.text],
                "answer": [self.answer_start, self.answer_end], "negatives": [[n.title, n.text] for n in self.negatives]}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SpanExample:
        """The example `to_json` wrote; ValueError for an answer span that is not a stretch of the positive's text."""
        positive, answer = ContextPassage(*raw["positive"]), raw["answer"]
        # Training's targets index the text: a span outside it fails there, a reversed one trains on nothing.
        if not (isinstance(answer, list) and len(answer) == 2 and all(type(i) is int for i in answer)
                and 0 <= answer[0] < answer[1] <= len(positive.text)):
            raise ValueError(f"answer {answer!r:.40} is not a span [start, end] of the positive passage's {len(positive.text)} characters")
        return cls(raw["question"], positive, answer[0], answer[1], tuple(ContextPassage(*n) for n in raw["negatives"]))


@dataclass(frozen=True)
class DevQuestion:
    """A held-out question of one training file with its top retrieved passages, best first."""

    file: str
    record: QARecord
    passages: tuple[ContextPassage, ...]

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "record": asdict(self.record), "passages": [[p.title, p.text] for p in self.passages]}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DevQuestion:
        return cls(raw["file"], QARecord(**raw["record"]), tuple(ContextPassage(*p) for p in raw["passages"]))


@dataclass
class SpanDataConfig:
    """How a data file is made; stored in its header."""

    train: list[Path]
    index: Path
    questions: int = 5000  # training questions drawn from the files (after `skip`)
    skip: int = 0  # leave out the first `skip` questions of the mix (those an earlier file trained on)
    negatives: int = 2
    depth: int = 10  # negatives are drawn from, and dev questions keep, this many retrieved passages
    dev_size: int = 300
    mode: str = "hybrid"
    seed: int = 0
    command: list[str] = field(default_factory=lambda: typed_command("trainer.span_data"))

    def check(self) -> None:
        """Raise ValueError on settings that cannot work, before anything slow starts."""
        check_counts(self, at_least_one=("questions", "depth"), at_least_zero=("skip", "negatives", "dev_size"))
        if self.negatives > self.depth:  # drawn from the top --depth passages: there would be fewer than asked for
            raise ValueError(f"--negatives {self.negatives} are drawn from the top --depth {self.depth} passages (less the gold "
                             f"ones and those holding the answer): give a --depth above {self.negatives}")
        if not self.train:
            raise ValueError("--train needs at least one QA file")
        for path in self.train:
            if not Path(path).is_file():
                raise ValueError(f"training file not found: {path}")
            if "-dev" in Path(path).name or "-test" in Path(path).name:
                raise ValueError(f"{path} looks like an evaluation file: train on the train files only")


@dataclass
class SpanData:
    """A data file read back: its header, the training examples and the dev questions per file."""

    header: dict[str, Any]
    examples: list[SpanExample]
    dev: dict[str, list[DevQuestion]]


# -- making the data -------------------------------------------------------------------------------

def holdout_split(files: Sequence[Path], dev_size: int, seed: int) -> tuple[dict[str, list[QARecord]], dict[str, list[QARecord]]]:
    """Per file (by name): the training records and the held-out dev records (dev_size // len(files) each)."""
    train, dev = {}, {}
    for path in files:
        name = Path(path).name.split(".")[0]
        train[name], dev[name] = split_train_dev(read_qa(path), dev_size // len(files), seed)
    return train, dev


def mix_records(per_file: dict[str, list[QARecord]], needed: int, seed: int) -> list[QARecord]:
    """`needed` records taken in turn from each file (shuffled, seeded), so a small file is not drowned by a big one."""
    rng = random.Random(seed)
    queues = []
    for records in per_file.values():
        order = list(records)
        rng.shuffle(order)
        queues.append(order)
    mixed: list[QARecord] = []
    for i in range(max((len(q) for q in queues), default=0)):
        mixed += [q[i] for q in queues if i < len(q)]
        if len(mixed) >= needed:
            break
    return mixed[:needed]


def locate_answer(text: str, answers: Sequence[str]) -> tuple[int, int] | None:
    """Character span of the earliest gold answer in `text`, case-sensitive first, then ignoring case.

    White space between the answer's words may differ (QED answers are tokenised: "( 16.1 % )"), and an
    answer that starts or ends with a word character must sit on a word boundary ("1990" not in "19901").
    """
    for flags in (0, re.IGNORECASE):
        best = None
        for answer in answers:
            words = answer.split()
            if not words:
                continue
            pattern = r"\s*".join(re.escape(w) for w in words)
            if words[0][0].isalnum():
                pattern = r"(?<!\w)" + pattern
            if words[-1][-1].isalnum():
                pattern += r"(?!\w)"
            found = re.search(pattern, text, flags)
            if found and (best is None or found.start() < best[0]):
                best = (found.start(), found.end())
        if best is not None:
            return best
    return None


def _gold_chunks(index: Index, doc_ids: Sequence[str]) -> Iterator[ContextPassage]:
    """The passages of the gold documents, chunked as the index chunks them."""
    m = index.manifest
    tokenizer = getattr(index.encoder, "tokenizer", None) if m.chunk_tokens else None
    # live_documents is one indexed lookup; Index.document also lists passage ids, which scans (0.1 s a call).
    for doc_id, (_, title, text, _) in index.store.live_documents(list(doc_ids)).items():
        for p in chunk_document(Document(doc_id, title, text), words=m.chunk_words, overlap=m.chunk_overlap,
                                tokenizer=tokenizer, tokens=m.chunk_tokens):
            yield ContextPassage(p.title, p.text)


def make_example(index: Index, record: QARecord, hits: Sequence[SearchHit], negatives: int, rng: random.Random) -> SpanExample | None:
    """The example of one record, or None when no gold passage holds the answer."""
    gold = set(record.gold_ids)
    if not gold:
        return None
    retrieved = (ContextPassage(h.title, h.text) for h in hits if h.doc_id in gold)
    positive = span = None
    # The retrieved gold passage first: it is what the reader will see when serving.
    for passage in itertools.chain(retrieved, _gold_chunks(index, record.gold_ids)):
        span = locate_answer(passage.text, record.answers)
        if span is not None:
            positive = passage
            break
    if positive is None or span is None:
        return None
    # A passage that mentions the answer elsewhere is no clean negative: leave it out.
    pool = [ContextPassage(h.title, h.text) for h in hits
            if h.doc_id not in gold and not contains_answer(h.text, record.answers) and h.text != positive.text]
    chosen = rng.sample(pool, min(negatives, len(pool)))
    return SpanExample(record.question, positive, span[0], span[1], tuple(chosen))


def retrieve_in_batches(index: Index, records: Sequence[QARecord], k: int, mode: str = "hybrid", batch_size: int = 64,
                        progress: bool = True, desc: str = "retrieve") -> Iterator[tuple[QARecord, list[SearchHit]]]:
    """(record, its top-k passages) for every record, searched `batch_size` questions at a time, with a progress bar."""
    with tqdm(total=len(records), desc=desc, unit="question", disable=not progress) as bar:
        for lo in range(0, len(records), batch_size):
            batch = records[lo : lo + batch_size]
            yield from zip(batch, index.search_many([r.question for r in batch], k=k, mode=mode))
            bar.update(len(batch))


def build_span_examples(index: Index, records: Sequence[QARecord], negatives: int, depth: int, mode: str = "hybrid",
                        seed: int = 0, progress: bool = True) -> list[SpanExample]:
    """Examples for the records that have a gold passage holding the answer (others are skipped)."""
    rng = random.Random(seed)
    found = (make_example(index, record, hits, negatives, rng)
             for record, hits in retrieve_in_batches(index, records, depth, mode, progress=progress, desc="examples"))
    return [e for e in found if e is not None]


def make_span_data(config: SpanDataConfig, index: Index, out: Path, progress: bool = True) -> dict[str, Any]:
    """Write the data file `out` (atomically: a partial file never appears) and return its header. An existing `out` is
    refused, not replaced: it may be the data a trained reader came from."""
    config.check()
    if out.exists():
        raise ValueError(f"--out {out} exists: choose a new file name, or delete it first to make it again")
    per_file, dev = holdout_split(config.train, config.dev_size, config.seed)
    records = mix_records(per_file, config.skip + config.questions, config.seed)[config.skip :]
    if not records:
        raise ValueError(f"no training question left: --dev-size {config.dev_size} and --skip {config.skip} hold out every one")
    examples = build_span_examples(index, records, config.negatives, config.depth, config.mode, config.seed, progress)
    if not examples:
        raise ValueError("no training example: no record has a gold passage (gold_ids) that contains its answer")
    dev_questions = [DevQuestion(name, record, tuple(ContextPassage(h.title, h.text) for h in hits))
                     for name, file_records in dev.items()
                     for record, hits in retrieve_in_batches(index, file_records, config.depth, config.mode, progress=progress, desc="dev")]
    used = {r.id for r in records}
    header = {"format": FORMAT, "version": FORMAT_VERSION, "command": config.command,
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items() if k != "command"},
              "records_used": {name: len({r.id for r in rs} & used) for name, rs in per_file.items()},
              "examples": len(examples), "dev_questions": {name: len(rs) for name, rs in dev.items()}}
    header["config"]["train"] = [str(p) for p in config.train]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps(header) + "\n")
        fh.writelines(json.dumps({"train": e.to_json()}, ensure_ascii=False) + "\n" for e in examples)
        fh.writelines(json.dumps({"dev": d.to_json()}, ensure_ascii=False) + "\n" for d in dev_questions)
    tmp.replace(out)
    return header


def read_span_data(path: Path) -> SpanData:
    """Read a data file written by `make_span_data`; ValueError names the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"span data file not found: {path}")
    examples: list[SpanExample] = []
    dev: dict[str, list[DevQuestion]] = {}
    where = ""  # the line being read, once past the header
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            header = json.loads(fh.readline())
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise ValueError("no span-data header")
            if header.get("version", 0) > FORMAT_VERSION:
                raise ValueError(f"format version {header['version']} is newer than this code reads ({FORMAT_VERSION})")
            for n, line in enumerate(fh, 2):
                where = f"line {n}: "
                raw = json.loads(line)
                if "train" in raw:
                    examples.append(SpanExample.from_json(raw["train"]))
                else:
                    question = DevQuestion.from_json(raw["dev"])
                    dev.setdefault(question.file, []).append(question)
    except (OSError, EOFError, KeyError, TypeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        what = f"missing field {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
        raise ValueError(f"{path} is not a span data file (python -m trainer.span_data writes one): {where}{what}") from exc
    return SpanData(header, examples, dev)


# -- command line ----------------------------------------------------------------------------------

def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The arguments of `python -m trainer.span_data` (and of `rag-train span-data`, which takes them as a parent)."""
    d = SpanDataConfig(train=[], index=Path())
    parser = argparse.ArgumentParser(prog="python -m trainer.span_data", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     add_help=add_help,
                                     description="Make the span reader's training data (examples and held-out dev questions) with an index.")
    add = parser.add_argument
    add("--train", required=True, help="QA training files, comma-separated (never an evaluation-only file)")
    add("--index", required=True, type=Path, help="index to retrieve passages from (opened read-only)")
    add("--out", required=True, type=Path, help="data file to write (.jsonl.gz)")
    add("--questions", type=int, default=d.questions, help="training questions to draw from the files")
    add("--skip", type=int, default=d.skip, help="leave out the first N questions of the mix (used by an earlier file)")
    add("--negatives", type=int, default=d.negatives, help="negative passages per question")
    add("--depth", type=int, default=d.depth, help="retrieved passages per question (negatives' pool; dev passages)")
    add("--dev-size", type=int, default=d.dev_size, help="questions held out of the training files")
    add("--mode", choices=SEARCH_MODES, default=d.mode, help="retrieval mode")
    add("--seed", type=int, default=d.seed, help="seed of the split and the sampling")
    parser.set_defaults(run=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    from indexer.index import Index  # here, not at the top: training imports this module where FAISS is missing

    config = SpanDataConfig(train=[Path(p) for p in args.train.split(",") if p], index=args.index, questions=args.questions,
                            skip=args.skip, negatives=args.negatives, depth=args.depth, dev_size=args.dev_size, mode=args.mode,
                            seed=args.seed)
    config.check()
    check_out_file(args.out, "span-data.jsonl.gz")  # now, not after minutes of retrieval
    with Index.open(args.index, readonly=True) as index:
        header = make_span_data(config, index, args.out)
    print(json.dumps({"out": str(args.out), "examples": header["examples"], "dev_questions": header["dev_questions"]}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m trainer.span_data`."""
    return run_command("python -m trainer.span_data", build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
