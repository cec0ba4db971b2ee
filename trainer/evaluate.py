"""`rag-eval qa`: answer quality (EM, F1), retrieval recall and latency of a pipeline on a QA file."""
from __future__ import annotations

import time
from typing import Any, Iterator, Sequence, TypeVar

import numpy as np
from tqdm.auto import tqdm

from rag.pipeline import Pipeline
from trainer.qa_data import QARecord
from trainer.qa_metrics import contains_answer, exact_match, f1_score

RECALL_CUTOFFS = (1, 5, 20)
T = TypeVar("T")


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """`items` in consecutive slices of `size`."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def evaluate_qa(
    pipeline: Pipeline, records: Sequence[QARecord], k: int = 5, mode: str = "hybrid", batch_size: int = 1, progress: bool = True
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics over `records` and one prediction row per question.

    Questions are answered as `rag-serve ask` answers them (`Pipeline.ask_many`: the edits in the index's memory
    apply, as the pipeline's scope decider and two-hop detector say). Retrieval goes to depth max(20, k) once per
    question, so recall@20 costs no extra search; the reader sees the top k. Latency is the whole answer, per
    question (batch time / batch size). recall@n counts a question found when a top-n passage belongs to a gold
    document (`gold_ids`); source_gold, over the questions with gold_ids whose answer names the passage it was read
    from, the share where that passage belongs to a gold document (None for a reader that names none).
    """
    depth = max(max(RECALL_CUTOFFS), k) if k else 0
    rows: list[dict[str, Any]] = []
    latencies: list[float] = []
    bar = tqdm(total=len(records), desc="eval", unit="question", disable=not progress)
    for batch in batches(records, batch_size):
        t0 = time.perf_counter()
        answers = pipeline.ask_many([r.question for r in batch], k=k, mode=mode, depth=depth)
        latencies += [(time.perf_counter() - t0) * 1e3 / len(batch)] * len(batch)
        for record, answered in zip(batch, answers):
            answer, found = answered.text, answered.passages
            gold = set(record.gold_ids)
            first_gold = next((i for i, h in enumerate(found) if h.doc_id in gold), None) if gold else None
            source = next((h for h in found if answered.source and h.id == answered.source.passage), None)
            rows.append({
                "id": record.id,
                "question": record.question,
                "answers": record.answers,
                "prediction": answer,
                "em": exact_match(answer, record.answers),
                "f1": f1_score(answer, record.answers),
                "first_gold_rank": first_gold,
                "has_gold_ids": bool(gold),
                "answer_in_top5": any(contains_answer(h.text, record.answers) for h in found[:5]),
                "passages": [h.id for h in found[:k]],
                "edit": answered.edit.id if answered.edit else None,
                "source": source.id if source else None,
                "source_is_gold": source is not None and source.doc_id in gold,
            })
        bar.update(len(batch))
    bar.close()
    return summarize(rows, latencies, retrieval=bool(depth)), rows


def summarize(rows: Sequence[dict[str, Any]], latencies: Sequence[float], retrieval: bool) -> dict[str, Any]:
    """The `rag-eval qa` JSON object; recall is null without retrieval or without gold_ids."""
    with_gold = [r for r in rows if r["has_gold_ids"]]
    summary: dict[str, Any] = {
        "n": len(rows),
        "em": float(np.mean([r["em"] for r in rows])) if rows else 0.0,
        "f1": float(np.mean([r["f1"] for r in rows])) if rows else 0.0,
    }
    for cutoff in RECALL_CUTOFFS:
        hit = [r["first_gold_rank"] is not None and r["first_gold_rank"] < cutoff for r in with_gold]
        summary[f"recall@{cutoff}"] = float(np.mean(hit)) if retrieval and with_gold else None
    summary["answer_recall@5"] = float(np.mean([r["answer_in_top5"] for r in rows])) if retrieval and rows else None
    # Where the reader names the passage it read the answer from (the span reader): how often that is a gold one.
    sourced = [r for r in with_gold if r["source"]]
    summary["source_gold"] = float(np.mean([r["source_is_gold"] for r in sourced])) if sourced else None
    summary["latency_p50_ms"] = float(np.percentile(latencies, 50)) if latencies else None
    summary["latency_p95_ms"] = float(np.percentile(latencies, 95)) if latencies else None
    summary["n_with_gold_ids"] = len(with_gold)
    return summary
