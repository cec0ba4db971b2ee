"""The HTTP API's request and response bodies: what /ask, /documents and /edits take and give, checked at the edge so
that a client's mistake is a 4xx naming the field, never a 500 or a corrupted index."""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from indexer.edit_memory import MAX_TEXT_CHARS, Edit
from indexer.names import unnamed_subject
from indexer.records import MAX_DOCUMENT_ID_CHARS, document_id_problem, is_blank, valid_unicode
from rag.pipeline import MAX_K


def _check_meta(meta: dict[str, Any]) -> None:
    """ValueError naming the field of a document's metadata that cannot be stored as JSON: a string or key with an
    unpaired surrogate, or NaN/Infinity (which Python's JSON parser lets through though JSON has no such numbers)."""
    todo: list[tuple[str, Any]] = [("meta", meta)]  # a stack, not recursion: the parser allows deep nesting
    while todo:
        where, value = todo.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where}: {value!r} is not a JSON number (JSON has no NaN or Infinity)")
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            todo.append((f"{where}.{key}", item))
        # The strings here: the value itself, or an object's keys (its values are checked in their turn).
        texts = [value] if isinstance(value, str) else list(value) if isinstance(value, dict) else []
        for text in texts:
            valid_unicode(text, where)


Text = Annotated[str, AfterValidator(lambda text: valid_unicode(text, "the text"))]


class AskRequest(BaseModel):
    """A question; k and mode default to the server's --k and --mode."""

    model_config = ConfigDict(extra="forbid", strict=True)
    question: Text = Field(description="the question")
    k: int | None = Field(None, ge=0, le=MAX_K, description="passages to read (0: closed book)")
    mode: Literal["dense", "sparse", "hybrid"] | None = Field(None, description="retrieval mode")
    adapter: Text | None = Field(None, description="a peft adapter folder (e.g. from `rag-train fewshot`), relative to the "
                                                   "server's --adapters folder, that the generative reader answers with; "
                                                   "loaded on first use, then kept beside the others")


class PassageOut(BaseModel):
    id: str
    doc_id: str
    title: str
    text: str
    score: float


class EditOut(BaseModel):
    """A stated fact that overrides the documents for the questions it is about."""

    id: str = Field(description="e1, e2, ...")
    fact: str
    question: str | None = Field(description="the question it answers, if stated")
    answer: str | None = Field(description="the answer to that question, if stated")
    subject: str | None = Field(description="what the fact is about, if stated")
    created_at: str = Field(description="when it was made (ISO 8601, UTC)")
    supersedes: str | None = Field(description="the edit this one replaced")
    revoked_at: str | None = Field(description="when it was revoked (ISO 8601, UTC)")
    superseded_by: str | None = Field(description="the edit that replaced this one")
    active: bool = Field(description="neither revoked nor superseded: questions about it are answered from it")
    warning: str | None = Field(None, description="what looks wrong with the edit as stated: a subject that neither "
                                "its fact nor its question names (a typo, most likely); null when nothing does")

    @classmethod
    def of(cls, edit: Edit) -> EditOut:
        return cls(**edit.to_json(), warning=unnamed_subject(edit.fact, edit.question, edit.subject))


class SourceOut(BaseModel):
    """Where the answer was read: `text[start:end]` of passage `passage` is the answer."""

    passage: str = Field(description="the passage's id")
    start: int = Field(description="the answer's first character in the passage's text")
    end: int = Field(description="one past its last character")


class AskResponse(BaseModel):
    """The answer, the passages it was read from (best first), and where the time went (ms). When the
    question is about an edit, the answer was read from that edit alone (`edit`), not from the passages;
    when it asks beyond the edit (`beyond`), it was asked again with the edit's answer in place of its first hop
    (`asked_as`) or read from the edit's fact with passages, and `edit` is the edit its first hop goes through."""

    question: str
    answer: str
    passages: list[PassageOut]
    edit: EditOut | None = Field(description="the edit the question is about (with `beyond`: the edit its first hop "
                                                     "goes through), or null")
    asked_as: str | None = Field(None, description="the question the reader was asked instead, when the question asked "
                                                   "beyond `edit` and the edit's answer took the place of its first hop")
    beyond: bool = Field(False, description="the question asks beyond `edit` (a second hop from its answer): the "
                                            "answer follows from the edit but is not the one it states")
    answered_by: EditOut | None = Field(None, description="the edit that answered the question as asked instead "
                                                          "(`asked_as`), if one did; null otherwise")
    source: SourceOut | None = Field(None, description="the passage the answer was read out of (one of `passages`) and "
                                                       "where in its text, when the reader can tell: the span reader "
                                                       "can, a generative reader cannot; null then, and for an answer "
                                                       "from an edit")
    timings: dict[str, float]
    batch_size: int = Field(description="questions answered together in this one's micro-batch")


def _document_id(value: str) -> str:
    """`value` if GET and DELETE /documents/{id} can name it, else ValueError saying why not."""
    problem = document_id_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _document_text(value: str) -> str:
    if is_blank(value):
        raise ValueError("the text must not be blank")
    return value


class DocumentIn(BaseModel):
    """A document to add or replace. Fields other than id, title and text are kept as its metadata."""

    model_config = ConfigDict(extra="allow", strict=True)
    # Checked in code (see EditText): a Field pattern would report an unpaired surrogate as "unable to parse raw data".
    id: Annotated[Text, AfterValidator(_document_id)] = Field(
        description="document id: no '#' (passage ids use it), no control characters, no leading or trailing space, "
                    "not '.' or '..'", json_schema_extra={"minLength": 1, "maxLength": MAX_DOCUMENT_ID_CHARS})
    title: Text = ""
    text: Annotated[Text, AfterValidator(_document_text)] = Field(description="the text; must not be blank",
                                                                   json_schema_extra={"minLength": 1})

    @model_validator(mode="before")
    @classmethod
    def _encodable_meta(cls, data: Any) -> Any:
        # Before pydantic reads the fields: it reports a metadata key with an unpaired surrogate without naming it.
        if isinstance(data, dict):
            _check_meta({k: v for k, v in data.items() if k not in ("id", "title", "text")})
        return data


class UpsertRequest(BaseModel):
    """A batch of documents, written as one atomic change."""

    model_config = ConfigDict(extra="forbid", strict=True)
    documents: list[DocumentIn] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> UpsertRequest:
        seen: set[str] = set()
        for doc in self.documents:
            if doc.id in seen:
                raise ValueError(f"document id {doc.id!r} appears twice in one batch")
            seen.add(doc.id)
        return self


class DocumentOut(BaseModel):
    id: str
    title: str
    text: str
    meta: dict[str, Any]
    version: int
    passage_ids: list[str]


def _edit_text(value: str) -> str:
    if is_blank(value):
        raise ValueError("must not be blank")
    if len(value) > MAX_TEXT_CHARS:
        raise ValueError(f"{len(value):,} characters; at most {MAX_TEXT_CHARS:,}")
    return value


# Checked in code, not with Field(max_length=, pattern=): a length or pattern check refuses an unpaired
# surrogate as "unable to parse raw data" before valid_unicode could say what and where it is.
EditText = Annotated[Text, AfterValidator(_edit_text), Field(json_schema_extra={"minLength": 1, "maxLength": MAX_TEXT_CHARS})]


class EditIn(BaseModel):
    """A fact to state. By default it replaces the active edit that asks the same question, if any."""

    model_config = ConfigDict(extra="forbid", strict=True)
    fact: EditText = Field(description="the fact, in a sentence: what the reader reads instead of the documents")
    question: EditText | None = Field(None, description="the question it answers; questions like it are answered from it")
    answer: EditText | None = Field(None, description="the answer to `question` (needs `question`)")
    subject: EditText | None = Field(None, description="what the fact is about, e.g. a name; when given, only questions "
                                    "that name it can be in the edit's scope")
    supersedes: Text | None = Field(None, description="id of the active edit this one replaces")

    @model_validator(mode="after")
    def _answer_needs_question(self) -> EditIn:
        if self.answer is not None and self.question is None:
            raise ValueError("an answer needs its question: give `question` too, or state the answer in `fact`")
        return self


class EditDetail(EditOut):
    history: list[EditOut] = Field(description="every edit about the same thing, this one included, oldest first")


class EditList(BaseModel):
    edits: list[EditOut]


class ErrorOut(BaseModel):
    error: str


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (400, 401, 404, 409, 413, 415, 422, 503)}
