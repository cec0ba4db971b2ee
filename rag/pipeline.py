"""Question in, answer with its sources out: retrieve the top-k passages, then let the reader answer."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

from indexer.index import MODES, Index
from indexer.records import SearchHit
from rag.models import DEFAULT_READER
from rag.reader import DecoderReader, PassageText
from rag.retriever import DualEncoder
from rag.span_reader import SpanReader, is_span_reader

MAX_K = 100


@dataclass
class Answer:
    """An answer, the passages it was read from (best first) and where the time went (milliseconds)."""

    question: str
    text: str
    passages: list[SearchHit]
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.text,
            "passages": [p.to_json() for p in self.passages],
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
        }


def check_request(question: str, k: int, mode: str) -> None:
    """Reject what cannot be answered, with a message that says how to fix it."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("empty question: ask something")
    if not isinstance(k, int) or not 0 <= k <= MAX_K:
        raise ValueError(f"k must be an integer from 0 (closed book) to {MAX_K}, got {k!r}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")


class Reader(Protocol):
    """What the pipeline needs of a reader: the decoder reader and the span reader both have it."""

    default_k: int  # passages it reads when a request does not say

    def generate(self, questions: Sequence[str], passages: Sequence[Sequence[PassageText]]) -> list[str]: ...


class Pipeline:
    """Retrieval-augmented answering over one index. k=0 answers closed-book, without the index."""

    def __init__(self, index: Index | None, reader: Reader, retriever: DualEncoder | None = None) -> None:
        self.index = index
        self.reader = reader
        self.retriever = retriever

    @classmethod
    def load(
        cls,
        index_dir: str | Path | None,
        reader: str | None = None,
        adapter: str | Path | None = None,
        device: str | None = None,
        constrain_to_passages: bool = False,
    ) -> Pipeline:
        """Open an index read-only and load the reader: a span reader folder (default: the shipped one), or a causal LM."""
        index = Index.open(index_dir, readonly=True, device=device or "cpu") if index_dir else None
        reader = reader or DEFAULT_READER
        if is_span_reader(reader):
            if adapter or constrain_to_passages:
                raise ValueError("--adapter and --constrain apply to a generative reader, not to a span reader (its answers are spans)")
            return cls(index, SpanReader.from_pretrained(reader, device=device))
        return cls(index, DecoderReader(reader, adapter=adapter, device=device, constrain_to_passages=constrain_to_passages))

    def retrieve(self, questions: Sequence[str], k: int, mode: str = "hybrid") -> list[list[SearchHit]]:
        """The top-k passages for each question (empty lists when k=0)."""
        if k == 0:
            return [[] for _ in questions]
        if self.index is None:
            raise ValueError("this pipeline has no index: open one, or ask closed-book with k=0")
        vectors = self.retriever.encode_queries(list(questions)) if self.retriever is not None and mode != "sparse" else None
        return self.index.search_many(list(questions), k=k, mode=mode, query_vectors=vectors)

    def ask(self, question: str, k: int | None = None, mode: str = "hybrid") -> Answer:
        """Answer one question from its top-k passages (k None: the reader's default)."""
        return self.ask_many([question], k=k, mode=mode)[0]

    def ask_many(self, questions: Sequence[str], k: int | None = None, mode: str = "hybrid") -> list[Answer]:
        """Answer a batch of questions with one retrieval call and one batched generation (k None: the reader's default)."""
        k = self.reader.default_k if k is None else k
        for q in questions:
            check_request(q, k, mode)
        t0 = time.perf_counter()
        passages = self.retrieve(questions, k, mode)
        t1 = time.perf_counter()
        texts = self.reader.generate(questions, passages)
        t2 = time.perf_counter()
        timings = {"retrieve_ms": (t1 - t0) * 1e3, "read_ms": (t2 - t1) * 1e3, "total_ms": (t2 - t0) * 1e3}
        return [Answer(q, text, hits, dict(timings)) for q, text, hits in zip(questions, texts, passages)]
