"""`rag-eval edits`: reliability, generality, locality and portability of knowledge edits, and edit latency.

The evaluation works on a copy of the index (without its edit memory), so the user's index is never
changed. It answers every neighbour question before any edit, then applies the edits `batch` at a
time (sequential editing at scale) and, after each batch, answers that batch's questions:
- reliability: share of edited questions whose answer contains target_new (normalised);
- generality: the same over the paraphrases;
- locality: share of neighbour questions whose answer is identical before and after the edits;
  `locality_unrelated` counts only the neighbours that name no edited subject: with many edits applied
  at once, a neighbour of one case can be about another case's edited subject, and should change;
- portability: share of portability questions answered correctly (null when no case has one).
A case whose edit a later case of the same round replaced (it asks the same question: `EditMemory.add` keeps the
newer) is answered with the other case's answer, so it is counted as `superseded` and left out of n, reliability,
generality and portability; its neighbours, unrelated to either edit, still count for locality.
Edit latency is the time of `EditMemory.add`, which returns once the edit is durable and searchable:
the next question sees it.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from indexer.edit_memory import MEMORY_DIR, EditMemory
from indexer.index import LOCK_FILE
from indexer.names import names_any
from rag.pipeline import Pipeline
from trainer.edit_cases import EditCase
from trainer.evaluate import batches
from trainer.qa_metrics import contains_answer


@contextmanager
def index_copy(index_dir: str | Path) -> Iterator[Path]:
    """A scratch copy of an index folder without its edit memory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="rag-edit-eval-") as scratch:
        copy = Path(scratch) / "index"
        shutil.copytree(index_dir, copy, ignore=shutil.ignore_patterns(MEMORY_DIR, LOCK_FILE))
        yield copy


def _answers(pipeline: Pipeline, questions: Sequence[str], k: int | None, mode: str, batch_size: int,
             bar: tqdm | None = None) -> list[tuple[str, str | None]]:
    """(answer, id of the edit it came from) for each question, asked `batch_size` at a time."""
    out: list[tuple[str, str | None]] = []
    for batch in batches(questions, batch_size):
        out += [(answer.text, answer.edit.id if answer.edit else None) for answer in pipeline.ask_many(batch, k=k, mode=mode)]
        if bar is not None:
            bar.update(len(batch))
    return out


def evaluate_edits(pipeline: Pipeline, cases: Sequence[EditCase], batch: int | None = None, extra: Sequence[EditCase] = (),
                   k: int | None = None, mode: str = "hybrid", batch_size: int = 16, progress: bool = True
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics over `cases` and one row per case. `extra` edits are applied first and not evaluated
    (edits accumulated at scale); `batch` edits are applied before each evaluation round (None: all)."""
    memory = pipeline.index.memory
    if len(memory):
        raise ValueError("evaluate edits on an index copy with an empty edit memory (see index_copy)")
    batch = batch or len(cases)
    neighbors = [p.question for c in cases for p in c.neighbors]
    total = len(neighbors) + sum(1 + len(c.paraphrases) + len(c.neighbors) + (c.portability is not None) for c in cases)
    bar = tqdm(total=total, desc="edit eval", unit="question", disable=not progress)
    before = iter(_answers(pipeline, neighbors, k, mode, batch_size, bar))
    latencies = [_timed_add(memory, c)[0] for c in tqdm(extra, desc="extra edits", unit="edit", disable=not progress)]
    subjects = {c.subject for c in extra if c.subject}
    rows: list[dict[str, Any]] = []
    for start in range(0, len(cases), batch):
        round_cases = cases[start : start + batch]
        added = [_timed_add(memory, c) for c in round_cases]
        latencies += [ms for ms, _ in added]
        subjects |= {c.subject for c in round_cases if c.subject}
        questions = [q for c in round_cases for q in _probes(c)]
        after = iter(_answers(pipeline, questions, k, mode, batch_size, bar))
        for case, (_, edit_id) in zip(round_cases, added):
            rows.append(_score(case, after, before, subjects) | {"superseded_by": memory.get(edit_id).superseded_by})
    bar.close()
    return summarize(rows, latencies, len(memory)), rows


def _timed_add(memory: EditMemory, case: EditCase) -> tuple[float, str]:
    """(milliseconds the add took, the new edit's id)."""
    t0 = time.perf_counter()
    edit = memory.add(case.fact, question=case.question, answer=case.target_new, subject=case.subject)
    return (time.perf_counter() - t0) * 1e3, edit.id


def _probes(case: EditCase) -> list[str]:
    """A case's questions in the order `_score` reads their answers."""
    return [case.question, *case.paraphrases, *(p.question for p in case.neighbors),
            *([case.portability.question] if case.portability else [])]


def _score(case: EditCase, after: Iterator[tuple[str, str | None]], before: Iterator[tuple[str, str | None]],
           edited_subjects: set[str]) -> dict[str, Any]:
    edited = next(after)
    paraphrased = [next(after) for _ in case.paraphrases]
    neighbors = [(next(before), next(after)) for _ in case.neighbors]
    ported = next(after) if case.portability else None
    return {
        "id": case.id,
        "question": case.question,
        "target_new": case.target_new,
        "answer": edited[0],
        "edit_used": edited[1],
        "reliable": contains_answer(edited[0], [case.target_new]),
        "paraphrase_answers": [a for a, _ in paraphrased],
        "general": [contains_answer(a, [case.target_new]) for a, _ in paraphrased],
        "neighbor_answers": [{"before": b[0], "after": a[0], "edit_used": a[1]} for b, a in neighbors],
        "neighbor_names_edited_subject": [names_any(p.question, edited_subjects) for p in case.neighbors],
        "local": [b[0] == a[0] for b, a in neighbors],
        "portability_answer": None if ported is None else ported[0],
        "portability_edit_used": None if ported is None else ported[1],
        "portable": None if ported is None else contains_answer(ported[0], [case.portability.answer]),
    }


def summarize(rows: Sequence[dict[str, Any]], latencies_ms: Sequence[float], edits_in_memory: int) -> dict[str, Any]:
    """The `rag-eval edits` JSON object; `n`, reliability, generality and portability count the cases whose edit was not
    replaced (`superseded`), locality every case's neighbours."""
    def share(values: list[bool]) -> float | None:
        return float(np.mean(values)) if values else None

    scored = [r for r in rows if r.get("superseded_by") is None]
    portable = [r["portable"] for r in scored if r["portable"] is not None]
    return {
        "n": len(scored),
        "superseded": len(rows) - len(scored),
        "reliability": share([r["reliable"] for r in scored]),
        "generality": share([g for r in scored for g in r["general"]]),
        "locality": share([loc for r in rows for loc in r["local"]]),
        "locality_unrelated": share([loc for r in rows for loc, named in zip(r["local"], r["neighbor_names_edited_subject"]) if not named]),
        "neighbors_naming_edited_subjects": sum(sum(r["neighbor_names_edited_subject"]) for r in rows),
        "portability": share(portable),
        "edit_latency_p50_ms": float(np.percentile(latencies_ms, 50)) if latencies_ms else None,
        "edit_latency_p99_ms": float(np.percentile(latencies_ms, 99)) if latencies_ms else None,
        "edits_in_memory": edits_in_memory,
    }
