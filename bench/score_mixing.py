"""Benchmark diagnostic: does mixing the untrained encoder back into a joint run's retriever raise recall@5?

Fine-tuning on a few hundred questions can forget what the pretrained encoder knew; the usual cure is to mix the two
(WiSE-FT mixes weights; this mixes scores, which costs no re-embedding and bounds what a weight mix might give).
Each passage's score is `w * untrained + (1 - w) * trained` (inner products of each side's query and passage vectors)
at the fixed weights of `--weights`, over the joint bench's sets (500 seeded questions each of squad-open-dev and the
gold_ids records of nq-open-test). Nothing is chosen on these figures: they say whether mixing is worth trying.
`--run` is a `rag-train joint` run that trained both sides, with the corpus already re-embedded by
bench/joint_training.py (its evaluation-index), or re-embedded here (about 20 minutes on two cores).

Run: `python bench/score_mixing.py --run runs/joint-hybrid-160/pdist`
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from bench.common import DEFAULT_INDEX, default_out, log, machine_info, results_out, write_result
from bench.joint_training import question_sets, trained_index
from indexer.dense import TorchExactSearch
from indexer.index import Index
from rag.retriever import DualEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=DEFAULT_INDEX, help="whole-corpus index, only read (default %(default)s)")
    parser.add_argument("--run", type=Path, required=True, help="a rag-train joint run folder that trained both sides")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0], help="weights of the untrained scores")
    parser.add_argument("--limit", type=int, default=500, help="questions per set (seeded sample, seed 0)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default bench/results/score_mixing.json; with another --limit, score_mixing_limitN.json)")
    args = parser.parse_args()
    if not (args.run / "export" / "encoder").is_dir():
        parser.error(f"--run {args.run}: no export/encoder there (a finished rag-train joint run folder has one)")
    if json.loads((args.run / "config.json").read_text()).get("query_side_only", False):
        parser.error(f"--run {args.run} trained the query side only: its passages are the index's own, nothing to mix")
    if not all(0.0 <= w <= 1.0 for w in args.weights):
        parser.error("--weights must lie from 0 to 1")
    out, info = results_out(parser, args, default_out(__file__)), machine_info()
    torch.set_num_threads(args.threads)
    index = Index.open(args.index, readonly=True)
    untrained, trained = DualEncoder(index.manifest.encoder), DualEncoder(str(args.run / "export" / "encoder"))
    searched = trained_index(index, args.run, trained)
    # One process: its shard is the whole re-embedded corpus, with the store rows as ids.
    exact = TorchExactSearch.from_faiss(searched.dense.shard.index, "cpu")
    rows, trained_vectors = exact.ids.numpy(), exact.vectors.numpy()
    untrained_vectors = searched.stored_vectors(rows.tolist())
    doc_ids = {p.row: p.doc_id for p in index.store.iter_passages(index.generation)}
    result: dict[str, Any] = {"run": str(args.run), "sets": {}}
    for name, records in question_sets(args.limit).items():
        questions = [r.question for r in records]
        before, after = untrained.encode_queries(questions) @ untrained_vectors.T, trained.encode_queries(questions) @ trained_vectors.T
        figures = {}
        for weight in args.weights:
            top = np.argsort(-(weight * before + (1 - weight) * after), axis=1)[:, :5]
            hits = [any(doc_ids[int(rows[j])] in set(r.gold_ids) for j in row) for row, r in zip(top, records)]
            figures[f"untrained_weight_{weight:g}"] = {"recall@5": round(float(np.mean(hits)), 4)}
        result["sets"][name] = {"n": len(records), **figures}
        log(name, json.dumps(result["sets"][name]))
    write_result(out, result, info)


if __name__ == "__main__":
    main()
