"""Benchmark: retrieval quality, recall@1/5/20 of gold documents for dense, sparse and hybrid search.

A question counts as found at k when one of its top-k passages belongs to a document in its
gold_ids. Question sets: all of squad-open-dev, and the nq-open-test questions with gold_ids.
Each mode retrieves k=20 once per question (search_many, batches of 64) and all recalls come from
that list; query vectors are encoded once per question set and shared by dense and hybrid.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_INDEX, default_out, log, machine_info, read_qa, results_out, write_result
from indexer.encoder import TextEncoder
from indexer.index import MODES, Index

CUTOFFS = (1, 5, 20)
BATCH = 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, default=DEFAULT_INDEX, help="index folder (default %(default)s)")
    ap.add_argument("--out", type=Path, default=None,
                    help="result JSON (default bench/results/retrieval_quality.json; with another --limit, retrieval_quality_limitN.json)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N questions per set (for testing; 0 = all)")
    args = ap.parse_args()
    out = results_out(ap, args, default_out(__file__))
    info = machine_info()
    encoder = TextEncoder()
    index = Index.open(args.index, encoder, readonly=True)
    depth = max(CUTOFFS)
    result: dict = {"index": str(args.index), "index_stats": index.stats(), "batch": BATCH, "cutoffs": list(CUTOFFS), "sets": {}}

    sets = {
        "squad-open-dev": read_qa("squad-open-dev"),
        "nq-open-test (with gold_ids)": [r for r in read_qa("nq-open-test") if r.get("gold_ids")],
    }
    for name, records in sets.items():
        if args.limit:
            records = records[: args.limit]
        questions = [r["question"] for r in records]
        golds = [set(r["gold_ids"]) for r in records]
        # One batched look-up: Index.document() scans the whole passages table on every call.
        live = set(index.store.live_documents(sorted(set().union(*golds))))
        in_index = sum(bool(gold & live) for gold in golds)
        log(f"{name}: {len(records)} questions, {in_index} with a gold document in the index; encoding")
        t0 = time.perf_counter()
        vectors = encoder(questions)
        entry: dict = {"questions": len(records), "with_gold_in_index": in_index, "encode_seconds": time.perf_counter() - t0}
        for mode in MODES:
            first_gold = np.full(len(records), depth, dtype=np.int64)  # rank (0-based) of the first gold hit
            t0 = time.perf_counter()
            for start in range(0, len(records), BATCH):
                batch = questions[start : start + BATCH]
                vecs = None if mode == "sparse" else vectors[start : start + BATCH]
                for j, hits in enumerate(index.search_many(batch, depth, mode, query_vectors=vecs)):
                    gold = golds[start + j]
                    first_gold[start + j] = next((r for r, h in enumerate(hits) if h.doc_id in gold), depth)
                if start // BATCH % 40 == 0:
                    log(f"  {mode}: {start + len(batch)}/{len(records)}")
            entry[mode] = {f"recall@{c}": float(np.mean(first_gold < c)) for c in CUTOFFS}
            entry[mode]["search_seconds"] = time.perf_counter() - t0
            log(f"{name} {mode}: {entry[mode]}")
        result["sets"][name] = entry
    write_result(out, result, info)


if __name__ == "__main__":
    main()
