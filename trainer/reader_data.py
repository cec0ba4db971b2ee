"""Training examples for a reader: a question, the top-k passages our retriever finds, and the short answer.

As in RAG-tuning, the gold passage (one of a `gold_ids` document that contains the answer) is kept
among the k at a random position, with retrieved distractors beside it, so the reader learns to find
the answer among passages like the ones it will see when serving.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from tqdm.auto import tqdm

from indexer.chunking import chunk_words
from indexer.records import Document
from indexer.index import Index
from trainer.qa_data import ContextPassage, QARecord
from trainer.qa_metrics import contains_answer


@dataclass(frozen=True)
class ReaderExample:
    question: str
    passages: list[ContextPassage]
    answer: str
    gold_position: int | None  # where the gold passage sits among `passages`, None when none was found


def _gold_passage(index: Index, record: QARecord) -> ContextPassage | None:
    """A 100-word window of a gold document that contains the answer, or None."""
    for doc_id in record.gold_ids:
        doc = index.document(doc_id)
        if doc is None:
            continue
        for passage in chunk_words(Document(doc_id, doc.title, doc.text), words=100):
            if contains_answer(passage.text, record.answers):
                return ContextPassage(doc.title, passage.text)
    return None


def build_examples(
    index: Index, records: Sequence[QARecord], k: int, seed: int = 0, mode: str = "hybrid", batch_size: int = 64, progress: bool = True
) -> list[ReaderExample]:
    """One example per record: its top-k retrieved passages, with the gold passage in it at a random position."""
    rng = random.Random(seed)
    examples = []
    bar = tqdm(total=len(records), desc="retrieve", unit="question", disable=not progress)
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        hits = index.search_many([r.question for r in batch], k=k, mode=mode)
        for record, found in zip(batch, hits):
            answer = record.answers[0]
            gold = set(record.gold_ids)
            passages = [ContextPassage(h.title, h.text) for h in found]
            gold_position = next((i for i, h in enumerate(found) if h.doc_id in gold and contains_answer(h.text, record.answers)), None)
            if gold_position is None and gold:
                passage = _gold_passage(index, record)
                if passage is not None:
                    # Drop the weakest distractor for the gold passage, then put it anywhere.
                    passages = passages[: k - 1]
                    gold_position = rng.randrange(len(passages) + 1)
                    passages.insert(gold_position, passage)
            elif gold_position is not None:
                passage = passages.pop(gold_position)
                gold_position = rng.randrange(len(passages) + 1)
                passages.insert(gold_position, passage)
            examples.append(ReaderExample(record.question, passages, answer, gold_position))
        bar.update(len(batch))
    bar.close()
    return examples
