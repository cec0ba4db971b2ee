"""Question-answer files: JSON lines `{id, question, answers, gold_ids?}`, plain or gzipped."""
from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, TypeVar

from indexer.records import is_blank, valid_unicode

T = TypeVar("T")


@dataclass(frozen=True)
class ContextPassage:
    """A passage as a reader sees it."""

    title: str
    text: str


@dataclass(frozen=True)
class QARecord:
    """One question with its gold answers and, where known, the ids of the documents that answer it."""

    id: str
    question: str
    answers: list[str]
    gold_ids: list[str] = field(default_factory=list)


def jsonl_lines(path: Path, what: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for every non-blank line of a .jsonl or .jsonl.gz file; ValueError "`what` not found: path"."""
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder: give a .jsonl or .jsonl.gz file")
    if not path.exists():  # not is_file(): a pipe (<(zcat ...)) is read as well
        raise ValueError(f"{what} not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    n = 0
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    yield n, line
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # not gzip, cut short, not UTF-8
        raise ValueError(f"{what} {path} cannot be read after line {n} ({exc}): is it whole, and gzip only if it ends in .gz?") from None


def read_qa(path: str | Path) -> list[QARecord]:
    """All records of a QA file; a malformed line raises ValueError naming file:line and what is wrong."""
    path = Path(path)
    records = []
    for n, line in jsonl_lines(path, "QA file"):
        try:
            raw = json.loads(line)
            if not isinstance(raw, dict):
                raise ValueError(f"a JSON {type(raw).__name__}, not an object")
            answers, gold_ids = raw["answers"], raw.get("gold_ids") or []
            # One answer or gold id may come bare; a bare string would otherwise be read as a list of characters.
            answers, gold_ids = ([x] if isinstance(x, str) else x for x in (answers, gold_ids))
            if not isinstance(raw["question"], str):
                raise ValueError(f"question is a {type(raw['question']).__name__}, not a string")
            if is_blank(raw["question"]):
                raise ValueError("empty question")
            if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
                raise ValueError("answers must be a non-empty list of strings")
            if not isinstance(gold_ids, list) or not all(isinstance(g, (str, int)) and not isinstance(g, bool) for g in gold_ids):
                raise ValueError("gold_ids must be a list of document ids")
            record = QARecord(str(raw.get("id", n)), raw["question"], answers, [str(g) for g in gold_ids])
            # Here, named by its line, not halfway through an evaluation (or when its row is written).
            for what, texts in (("id", [record.id]), ("question", [record.question]), ("an answer", answers), ("a gold id", record.gold_ids)):
                for text in texts:
                    valid_unicode(text, what)
            records.append(record)
        except (json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
            what = f"missing field {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(f"{path}:{n}: bad QA record ({what}); expected {{id, question, answers: [..], gold_ids?}}") from exc
    if not records:
        raise ValueError(f"{path}: no QA records")
    return records


def with_answers(records: list[QARecord]) -> list[QARecord]:
    """The records with their blank answers left out, and those left with no answer at all dropped: for training, where
    the first answer is the reader's target and "" would teach it to say nothing (20 of nq-open-train's records have
    only ""). Evaluation sets keep them, as every record counts there (qa_metrics ignores blank gold answers)."""
    kept: list[QARecord] = []
    for record in records:
        answers = [a for a in record.answers if not is_blank(a)]
        if answers:
            kept.append(record if answers == record.answers else replace(record, answers=answers))
    return kept


def sample(records: list[T], limit: int | None, seed: int = 0) -> list[T]:
    """A seeded random sample of `limit` records, in file order; all of them when limit is None or too big."""
    if not limit or limit >= len(records):
        return list(records)
    chosen = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in chosen]


def split_train_dev(records: list[QARecord], dev_size: int, seed: int) -> tuple[list[QARecord], list[QARecord]]:
    """A seeded hold-out of `dev_size` records for choosing settings; the rest trains."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    dev = {i for i in order[:dev_size]}
    return [r for i, r in enumerate(records) if i not in dev], [records[i] for i in sorted(dev)]


def split_by_article(records: list[QARecord], article_of: dict[str, str], share: float, seed: int) -> tuple[list[QARecord], list[QARecord]]:
    """(rest, held out): a seeded `share` of the articles the records' gold documents belong to (`article_of`: doc id ->
    article) held out, with every record whose gold is in one of them. Settings chosen on the held-out records are
    chosen on articles training never saw, as an evaluation set's are: a retriever whose passage side trained on an
    article's other paragraphs would look better on its questions than it is. Records with no known article stay in."""
    if not 0 < share < 1:
        raise ValueError(f"share of articles to hold out must be between 0 and 1, got {share}")
    articles = sorted({article_of[g] for r in records for g in r.gold_ids if g in article_of})
    held = set(random.Random(seed).sample(articles, round(share * len(articles))))
    out = [any(article_of.get(g) in held for g in r.gold_ids) for r in records]
    return [r for r, o in zip(records, out) if not o], [r for r, o in zip(records, out) if o]
