"""The reader's prompt for a few-shot example: zero-shot, with in-context shots, and (QA) with retrieved passages.

Training, evaluation and in-context learning all build prompts here, so a trained adapter is measured
on exactly the prompts it was trained on, and k-shot in-context learning differs from zero-shot only by
the shots: earlier (input, target) chat turns before the example.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from indexer.index import Index
from rag.reader import DecoderReader
from rag.retriever import DualEncoder
from trainer.fewshot_tasks import Example, FewShotTask
from trainer.qa_data import ContextPassage

DEFAULT_INDEX = Path(__file__).resolve().parents[1] / "indexes" / "shared"


def prompt_ids(reader: DecoderReader, task: FewShotTask, example: Example, passages: Sequence[ContextPassage] = (),
               shots: Sequence[Example] = ()) -> list[int]:
    """Token ids of the chat prompt for `example`, ending where the reply starts. QA uses the reader's own
    question prompt (with passages when given); the other tasks put the rendered input under the task's instruction."""
    if task.is_qa:
        return reader.prompt_ids(example.text, passages, [(s.text, s.target) for s in shots])
    return reader.chat_ids(task.instruction, example.text, [(s.text, s.target) for s in shots])


def fitting_prompt_ids(reader: DecoderReader, task: FewShotTask, example: Example, passages: Sequence[ContextPassage],
                       shots: Sequence[Example], max_tokens: int) -> tuple[list[int], int]:
    """The prompt with as many of `shots` (in order) as fit in `max_tokens`, and how many that was (binary search)."""
    low, high = 0, len(shots)  # the longest prefix that fits lies in [low, high]
    while low < high:
        middle = (low + high + 1) // 2
        if len(prompt_ids(reader, task, example, passages, shots[:middle])) <= max_tokens:
            low = middle
        else:
            high = middle - 1
    return prompt_ids(reader, task, example, passages, shots[:low]), low


def retrieve(index: Index | None, examples: Sequence[Example], k: int, query_encoder: DualEncoder | None = None,
             batch_size: int = 64) -> list[list[ContextPassage]]:
    """The top-k passages (the index's default search: hybrid, or dense without BM25) for each example's input; empty
    lists without an index or with k=0. `query_encoder`: a trained query side whose vectors replace the index's encoder
    for the dense half."""
    if index is None or k == 0:
        return [[] for _ in examples]
    found: list[list[ContextPassage]] = []
    for start in range(0, len(examples), batch_size):
        texts = [e.text for e in examples[start : start + batch_size]]
        vectors = query_encoder.encode_queries(texts) if query_encoder is not None else None
        hits = index.search_many(texts, k=k, mode=index.default_mode, query_vectors=vectors)
        found += [[ContextPassage(h.title, h.text) for h in row] for row in hits]
    return found


def open_index(task: FewShotTask, retrieval: bool, index: Path | None) -> Index | None:
    """The index to retrieve from when `retrieval` is on (a QA task only), else None; ValueError for an --index that
    would go unread."""
    if not retrieval:
        if index is not None:
            raise ValueError(f"--index {index} is read only with retrieval, which {task.name} goes without here: add --retrieval "
                             "(QA tasks), or leave --index out")
        return None
    if not task.is_qa:
        raise ValueError(f"--retrieval applies to QA tasks; {task.name} is classification")
    return Index.open(index or DEFAULT_INDEX, readonly=True)
