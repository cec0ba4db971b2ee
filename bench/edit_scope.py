"""Scope decisions of the edit router (rag/editing.py) compared: similarity threshold vs trained classifier.

Every edit case of a file (default counterfact-val: the thresholds were chosen on its pairs, so this
measures routing, not generalisation to new edits) goes into one scratch edit memory, as `rag-index
edit add` would put it (fact, question, answer, subject). Then every probe question of every case is
routed with `match_edits` (the `CANDIDATES` nearest edits, then the scope decision) by each decider:
- question / paraphrase: routed to the case's own edit (reliability / generality proxies);
- neighbor: routed to no edit (locality proxy). `locality_clean` leaves out the neighbours that name the
  subject of some edit in the memory: those may rightly be claimed by that edit.
Also reported: how often the own edit is among the candidates at all (the ceiling of any decider), how
often a question goes to a wrong edit, the decision time per question, and, as diagnostics, the figures at
every threshold from 0 to 1 in steps of 0.01 (`sweep`) and the one that would have routed these cases best
(mean of generality and locality).

Cases whose question repeats an earlier case's question are superseded by it in the memory (the memory
keeps one active edit per question); the own edit of such a case is the one that replaced it.

`--fold I/N` routes only the probes of the cases in that fold (every case's edit is still in the memory):
for zsre-1k, whose fold 0/2 trains the shipped classifier, `--fold 1/2` measures it on edits it never saw.

Run: `python bench/edit_scope.py [--edits FILE] [--fold I/N] [--classifier DIR]`
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from bench.common import RESULTS_DIR, check_out, log, machine_info, write_result
from indexer.edit_memory import EditMemory
from indexer.encoder import DEFAULT_ENCODER, TextEncoder
from indexer.names import names_any
from rag.editing import CANDIDATES, SCOPE_CLASSIFIER, about_subject, load_scope, match_edits
from trainer.edit_cases import FORMATS, EditCase, in_fold, parse_fold, read_cases
from trainer.shared_data import SHARED_DATA

VAL = SHARED_DATA / "editing" / "counterfact-val.jsonl.gz"
KINDS = ("question", "paraphrase", "neighbor")


def fill_memory(folder: Path, cases: Sequence[EditCase], encoder: TextEncoder) -> tuple[EditMemory, list[str]]:
    """A memory holding every case's edit, and each case's own edit id (after supersession)."""
    keys = [c.question.strip() for c in cases]
    # Embed all keys in one batch; the memory then looks them up instead of encoding one edit at a time.
    vectors = dict(zip(keys, encoder(keys, progress=True)))
    memory = EditMemory(folder, encode=lambda texts: np.stack([vectors[t] for t in texts]), dim=encoder.dim)
    added = [memory.add(c.fact, question=c.question, answer=c.target_new, subject=c.subject).id for c in cases]
    own = []
    for edit_id in added:
        edit = memory.get(edit_id)
        while edit.superseded_by is not None:
            edit = memory.get(edit.superseded_by)
        own.append(edit.id)
    return memory, own


def share(hits: Sequence[bool]) -> float | None:
    return round(float(np.mean(hits)), 4) if len(hits) else None


def outcomes(best: list[tuple[str | None, float]], threshold: float | list[float], probes: list[tuple[int, str, str]],
             own: list[str], named: list[bool]) -> dict[str, Any]:
    """Routing figures when each probe goes to its best-scored candidate if that score reaches `threshold` (one
    for all, or each probe's own)."""
    limits = threshold if isinstance(threshold, list) else [threshold] * len(best)
    hits: dict[str, list[bool]] = {k: [] for k in ("question", "paraphrase", "neighbor", "neighbor_clean")}
    wrong: dict[str, list[bool]] = {"question": [], "paraphrase": []}
    for (case, _, kind), (edit, score), names, limit in zip(probes, best, named, limits):
        routed = edit if edit is not None and score >= limit else None
        if kind == "neighbor":
            hits["neighbor"].append(routed is None)
            if not names:
                hits["neighbor_clean"].append(routed is None)
        else:
            hits[kind].append(routed == own[case])
            wrong[kind].append(routed is not None and routed != own[case])
    return {"threshold": None if isinstance(threshold, list) else round(float(threshold), 4),
            "reliability": share(hits["question"]), "generality": share(hits["paraphrase"]),
            "locality": share(hits["neighbor"]), "locality_clean": share(hits["neighbor_clean"]),
            "wrong_edit_question": share(wrong["question"]), "wrong_edit_paraphrase": share(wrong["paraphrase"]),
            "n": {k: len(v) for k, v in hits.items()}}


def route(memory: EditMemory, kind: str, classifier: Path, probes: list[tuple[int, str, str]], vectors: np.ndarray,
          own: list[str], named: list[bool]) -> dict[str, Any]:
    """Route every probe with one decider: the figures at its own threshold, and the threshold that would have
    routed best (mean of generality and locality) as a diagnostic. `named`: whether a probe names the
    subject of some edit in the memory."""
    scope = load_scope(kind, classifier, device="cpu")
    questions = [q for _, q, _ in probes]
    started = time.perf_counter()
    best: list[tuple[str | None, float]] = []
    limits: list[float] = []  # the score each probe's best edit needs (scope.limit)
    for lo in range(0, len(probes), 256):
        found = memory.search(vectors[lo : lo + 256], CANDIDATES)
        # match_edits' rule (the best-scored candidate the question can be about, in scope at or above the
        # threshold), kept with its score so that other thresholds can be tried without scoring again.
        for question, pairs, scores in zip(questions[lo : lo + 256], found, scope.scores(questions[lo : lo + 256], found)):
            about = [i for i, (edit, _) in enumerate(pairs) if about_subject(question, edit)]
            top = max(about, key=scores.__getitem__, default=None)
            best.append((pairs[top][0].id, float(scores[top])) if top is not None else (None, float("-inf")))
            limits.append(scope.limit(pairs[top][0]) if top is not None else scope.threshold)
    seconds = time.perf_counter() - started
    # The same decisions as the router's own function, on a slice.
    check = match_edits(memory, scope, questions[:64], vectors[:64])
    assert [m.edit.id if m else None for m in check] == [e if s >= t else None for (e, s), t in zip(best[:64], limits)]
    at_threshold = outcomes(best, limits, probes, own, named)
    # Both scores (a cosine, a probability) are swept over 0 to 1 in steps of 0.01.
    sweep = [outcomes(best, t, probes, own, named) for t in np.round(np.arange(0.0, 1.0001, 0.01), 2)]
    tuned = max(sweep, key=lambda o: (o["generality"] + o["locality"]) / 2)
    return {"decider": scope.name, **at_threshold, "threshold": scope.threshold, "subject_threshold": scope.subject_threshold,
            "question_subject_threshold": scope.question_subject_threshold,
            "ms_per_question": round(1000 * seconds / len(probes), 2),
            "best_routing_threshold": tuned,
            "sweep": [{k: o[k] for k in ("threshold", "reliability", "generality", "locality", "locality_clean")} for o in sweep]}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=Path, default=VAL, help="edit cases file (counterfact*, zsre* or canonical jsonl[.gz])")
    parser.add_argument("--format", choices=FORMATS, default=None, help="file format (default: guessed from its first record)")
    parser.add_argument("--fold", default=None, metavar="I/N", help="route only the probes of fold I of N of the cases")
    parser.add_argument("--classifier", type=Path, default=Path(SCOPE_CLASSIFIER), help="scope classifier folder")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (on a shared 2-core machine 2 threads ran 14x slower than 1)")
    parser.add_argument("--out", type=Path, default=None, help="result file (default bench/results/edit_scope.json for "
                                                                "counterfact-val, else edit_scope_<file name>.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    name = args.edits.name.split(".")[0]
    fold = parse_fold(args.fold) if args.fold else None
    suffix = f"-fold{fold[0]}of{fold[1]}" if fold else ""
    out = check_out(args.out or RESULTS_DIR / ("edit_scope.json" if args.edits == VAL and not fold else f"edit_scope_{name}{suffix}.json"))
    info = machine_info()
    cases = read_cases(args.edits, args.format, on_error="skip")
    log(f"{len(cases)} cases from {args.edits}")
    encoder = TextEncoder(DEFAULT_ENCODER, device="cpu")
    probes = [(i, q, kind) for i, c in enumerate(cases) if fold is None or in_fold(c, fold)
              for q, kind in [(c.question, "question"), *((p, "paraphrase") for p in c.paraphrases),
                              *((n.question, "neighbor") for n in c.neighbors)]]
    with tempfile.TemporaryDirectory(prefix="edit-scope-") as folder:
        started = time.perf_counter()
        memory, own = fill_memory(Path(folder), cases, encoder)
        fill_seconds = time.perf_counter() - started
        log(f"memory: {len(memory)} active edits of {len(cases)} added in {fill_seconds:.1f} s")
        vectors = encoder([q for _, q, _ in probes], progress=True)
        found = memory.search(vectors, CANDIDATES)
        ceiling = {kind: share([any(e.id == own[i] for e, _ in f) for (i, _, k), f in zip(probes, found) if k == kind])
                   for kind in ("question", "paraphrase")}
        subjects = [e.subject for e in memory.list() if e.subject]
        named = [kind == "neighbor" and names_any(q, subjects) for _, q, kind in probes]
        deciders = [route(memory, kind, args.classifier, probes, vectors, own, named) for kind in ("similarity", "classifier")]
        memory.close()
    results = {"edits_file": str(args.edits), "fold": args.fold, "cases": len(cases),
               "cases_routed": len({i for i, _, _ in probes}), "active_edits": len(set(own)), "candidates": CANDIDATES,
               "classifier": str(args.classifier), "similarity_encoder": DEFAULT_ENCODER,
               "own_edit_among_candidates": ceiling, "fill_seconds": round(fill_seconds, 1), "deciders": deciders}
    write_result(out, results, info)
    print(json.dumps({"edits_file": results["edits_file"], "cases": len(cases), "own_edit_among_candidates": ceiling,
                      **{d["decider"]: {k: d[k] for k in ("threshold", "reliability", "generality", "locality", "locality_clean",
                                                          "ms_per_question")} for d in deciders}}))


if __name__ == "__main__":
    main()
