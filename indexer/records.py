"""The records that flow through the indexer: documents in, passages stored, hits out."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def valid_unicode(text: str, what: str) -> str:
    """`text`, else a ValueError naming `what`: an unpaired surrogate (JSON's \\ud800, or bytes the command line
    could not decode as UTF-8) is text no tokenizer or database takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} is not valid Unicode: unpaired surrogate {text[exc.start]!a} at character {exc.start} "
                         "(bytes that are not UTF-8?)") from None
    return text


@dataclass(frozen=True)
class Document:
    """One corpus record before chunking. `meta` keeps every field that is not id/title/text."""

    id: str
    title: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Passage:
    """A retrievable unit: the n-th chunk of a document, id `{doc_id}#{n}`."""

    id: str
    doc_id: str
    title: str
    text: str


@dataclass(frozen=True)
class SearchHit:
    """One search result; `row` is the store row (and FAISS / tantivy id) of this passage version."""

    id: str
    doc_id: str
    title: str
    text: str
    score: float
    row: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "doc_id": self.doc_id, "title": self.title, "text": self.text, "score": self.score}


def passage_id(doc_id: str, n: int) -> str:
    """The stable id of a document's n-th passage."""
    return f"{doc_id}#{n}"
