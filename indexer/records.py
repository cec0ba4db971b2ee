"""The records that flow through the indexer: documents in, passages stored, hits out."""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any, Iterable


def valid_unicode(text: str, what: str) -> str:
    """`text`, else a ValueError naming `what`: an unpaired surrogate (JSON's \\ud800, or bytes the command line
    could not decode as UTF-8) is text no tokenizer or database takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} is not valid Unicode: unpaired surrogate {text[exc.start]!a} at character {exc.start} "
                         "(bytes that are not UTF-8?)") from None
    return text


def is_blank(text: str) -> bool:
    """Whether `text` shows nothing: only white space, control and format characters ("\\x00", a zero-width
    space). str.strip() keeps the controls, so a question or a document of NULs would pass for text."""
    return all(c.isspace() or unicodedata.category(c) in ("Cc", "Cf") for c in text)


def text_list(texts: Iterable[str], call: str) -> list[str]:
    """`texts` as a list, read once (a generator too). TypeError for one string, which is a sequence of its
    characters: `call("apple")` would otherwise search or ask for "a", "p", "p", "l", "e"."""
    if isinstance(texts, str):
        raise TypeError(f"{call} takes a list of strings, not the string {texts!r:.80}: {call}([{texts!r:.80}])")
    return list(texts)


# A document id names a file-like URL path (GET /documents/{id}) and prefixes its passages' ids.
MAX_DOCUMENT_ID_CHARS = 512


def has_control_characters(text: str) -> bool:
    """Whether `text` holds an ASCII control character, which a URL path or a file name cannot carry."""
    return any(ord(c) < 32 or c == "\x7f" for c in text)


def document_id_problem(doc_id: str) -> str | None:
    """What makes `doc_id` unfit to name a document (and so to be asked for by URL), or None."""
    if not 1 <= len(doc_id) <= MAX_DOCUMENT_ID_CHARS:
        return f"a document id is 1 to {MAX_DOCUMENT_ID_CHARS} characters, not {len(doc_id):,}"
    if "#" in doc_id:
        return f"document id {doc_id!r} contains '#', which passage ids reserve ({{doc_id}}#0, #1, ...)"
    # A URL path cannot carry control characters, and clients resolve "." and ".." away before sending one.
    if has_control_characters(doc_id) or doc_id != doc_id.strip() or doc_id in (".", ".."):
        return (f"document id {doc_id!r} must not contain control characters, start or end with white space, "
                "or be '.' or '..'")
    return None


# A title is stored, encoded and returned with each passage of its document: a long one is multiplied by them all.
MAX_TITLE_CHARS = 1_000
# JSON serialisers stop at some depth (pydantic's, which the server answers with, at 255 levels: metadata past it was
# stored but could not be read back). A bound far under it, and deep enough for any record's metadata.
MAX_META_DEPTH = 32


def document_fields_problem(title: str, meta: dict[str, Any]) -> str | None:
    """What makes a document's title or metadata unfit to store and serve back (too long a title, metadata nested
    too deep), or None."""
    if len(title) > MAX_TITLE_CHARS:
        return f"a title of {len(title):,} characters; at most {MAX_TITLE_CHARS:,} (each passage carries it)"
    level: list[Any] = [meta]
    for _ in range(MAX_META_DEPTH + 1):  # a container at level MAX_META_DEPTH + 1 is one too deep
        level = [item for value in level for item in (value.values() if isinstance(value, dict) else value)
                 if isinstance(item, (dict, list))]
        if not level:
            return None
    return f"metadata nested more than {MAX_META_DEPTH} levels deep"


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
