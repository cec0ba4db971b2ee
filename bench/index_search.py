"""Benchmark: search latency per mode, and our overhead over raw FAISS / tantivy calls.

Measures, one query at a time over a seeded sample of squad-open-dev questions (after a warm-up):
- p50/p95 latency (ms) and QPS of `index.search(q, k, mode)` for dense, sparse and hybrid
  (dense and hybrid include encoding the query);
- query encoding latency alone (`encoder([q])`);
- overhead of our search over the raw library call, ours_p50 / raw_p50 - 1, goal <= 0.10:
  dense: `search_many([q], k, "dense", query_vectors=v)` vs `faiss_index.search(v, k)` (vectors precomputed);
  sparse: `search(q, k, "sparse")` vs tantivy `searcher.search(parse_query(cleaned q), k)` + `searcher.doc(addr)`
  per hit (the stored documents, as a tantivy-only search would return them), and, a baseline of the dense one's
  kind, vs the same search + the rows alone from the fast field ours reads (`overhead_sparse_rows`).
  Ours and raw alternate query by query (and which goes first), so machine noise hits both alike;
  this runs in --rounds passes and the figure is the median over passes.
`--modes sparse` measures only sparse search (dense search can be very slow on a machine loaded by other work).
"""
from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_INDEX, check_out, default_out, log, machine_info, percentiles_ms, read_qa, write_result
from indexer.encoder import TextEncoder
from indexer.index import MODES, Index

OVERHEAD_GOAL = 0.10
_WORD = re.compile(r"\w+")  # the same cleaning as indexer.sparse.SparseIndex.search


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired(ours: Callable[[int], object], raw: Callable[[int], object], n: int, rounds: int) -> dict:
    """Time ours(i) and raw(i) for each query i, alternating which runs first, in `rounds` passes.
    The overhead is the median over passes of ours_p50 / raw_p50 - 1: a burst of load from other
    work on the machine spoils one pass, not the figure."""
    t_ours, t_raw, per_round = [], [], []
    for _ in range(rounds):
        o_round, r_round = [], []
        for i in range(n):
            if i % 2 == 0:
                o_round.append(timed(lambda: ours(i)))
                r_round.append(timed(lambda: raw(i)))
            else:
                r_round.append(timed(lambda: raw(i)))
                o_round.append(timed(lambda: ours(i)))
        per_round.append(float(np.median(o_round) / np.median(r_round) - 1))
        t_ours += o_round
        t_raw += r_round
    o, r = percentiles_ms(t_ours), percentiles_ms(t_raw)
    overhead = statistics.median(per_round)
    return {"ours": o, "raw": r, "rounds": rounds, "overhead_p50_per_round": per_round, "overhead_p50": overhead,
            "overhead_p50_pooled": o["p50_ms"] / r["p50_ms"] - 1, "overhead_mean": o["mean_ms"] / r["mean_ms"] - 1,
            "goal": OVERHEAD_GOAL, "goal_met": bool(overhead <= OVERHEAD_GOAL)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, default=DEFAULT_INDEX, help="index folder (default %(default)s)")
    ap.add_argument("--out", type=Path, default=default_out(__file__), help="result JSON (default %(default)s)")
    ap.add_argument("--queries", type=int, default=500, help="timed queries per measurement (default %(default)s)")
    ap.add_argument("--warmup", type=int, default=20, help="warm-up queries before each measurement (default %(default)s)")
    ap.add_argument("--k", type=int, default=5, help="results per query (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="question sample seed (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=5, help="passes over the queries for each overhead (default %(default)s)")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                    help="modes to measure (default all); dense or hybrid adds query encoding and the FAISS overhead")
    args = ap.parse_args()
    out = check_out(args.out)
    info = machine_info()

    questions = [r["question"] for r in read_qa("squad-open-dev")]
    sample = random.Random(args.seed).sample(questions, args.warmup + args.queries)
    warm, timed_qs = sample[: args.warmup], sample[args.warmup :]
    n, k = len(timed_qs), args.k
    encoder = TextEncoder()
    index = Index.open(args.index, encoder, readonly=True)
    log(f"opened {args.index}: {index.stats()}")
    result: dict = {"index": str(args.index), "index_stats": index.stats(), "queries": n, "warmup": args.warmup,
                    "k": k, "seed": args.seed, "question_set": "squad-open-dev",
                    "modes": args.modes}

    # 1. End-to-end latency per mode, one query at a time.
    result["search"] = {}
    for mode in args.modes:
        for q in warm:
            index.search(q, k, mode)
        times = []
        start = time.perf_counter()
        for q in timed_qs:
            times.append(timed(lambda: index.search(q, k, mode)))
        wall = time.perf_counter() - start
        result["search"][mode] = {**percentiles_ms(times), "qps": n / wall}
        log(f"search {mode}: {result['search'][mode]}")

    measured_dense = bool({"dense", "hybrid"} & set(args.modes))
    if measured_dense:
        # 2. Query encoding alone.
        for q in warm:
            encoder([q])
        result["query_encoding"] = percentiles_ms([timed(lambda: encoder([q])) for q in timed_qs])
        log(f"query encoding: {result['query_encoding']}")

        # 3. Overhead over raw FAISS (encoding excluded: vectors precomputed for both sides).
        vectors = np.stack([encoder([q])[0] for q in warm + timed_qs])  # one at a time, as a single-query search would
        faiss_index = index._snapshot.dense.index
        dense_ours = lambda i: index.search_many([sample[i]], k, "dense", query_vectors=vectors[i : i + 1])
        dense_raw = lambda i: faiss_index.search(vectors[i : i + 1], k)
        for i in range(args.warmup):
            dense_ours(i), dense_raw(i)
        result["overhead_dense"] = paired(lambda i: dense_ours(args.warmup + i), lambda i: dense_raw(args.warmup + i), n,
                                           args.rounds)
        log(f"dense overhead: {result['overhead_dense']['overhead_p50']:.3f}")

    if "sparse" in args.modes:
        # 4. Overhead over raw tantivy: parse, search, fetch each hit's stored document.
        searcher, tantivy_index = index._snapshot.sparse, index.sparse.index
        cleaned = [" ".join(_WORD.findall(q.lower())) for q in sample]

        def sparse_raw(i: int) -> list:
            hits = searcher.search(tantivy_index.parse_query(cleaned[i], ["title", "text"]), k).hits
            return [searcher.doc(addr) for _, addr in hits]

        sparse_ours = lambda i: index.search(sample[i], k, "sparse")
        for i in range(args.warmup):
            sparse_ours(i), sparse_raw(i)
        result["overhead_sparse"] = paired(lambda i: sparse_ours(args.warmup + i), lambda i: sparse_raw(args.warmup + i), n,
                                            args.rounds)
        log(f"sparse overhead: {result['overhead_sparse']['overhead_p50']:.3f}")

        # 4b. A baseline of the dense one's kind: the rows alone, through the same fast field ours reads (no stored
        # document), so everything ours does beyond finding them counts as overhead.
        def sparse_raw_rows(i: int) -> list:
            hits = searcher.search(tantivy_index.parse_query(cleaned[i], ["title", "text"]), k).hits
            return searcher.fast_field_values("row", [addr for _, addr in hits])

        for i in range(args.warmup):
            sparse_raw_rows(i)
        result["overhead_sparse_rows"] = paired(lambda i: sparse_ours(args.warmup + i), lambda i: sparse_raw_rows(args.warmup + i),
                                                 n, args.rounds)
        log(f"sparse overhead over the rows alone: {result['overhead_sparse_rows']['overhead_p50']:.3f}")

    # Sanity: ours and raw return the same rows.
    result["same_results_as_raw"] = {"of": len(sample)}
    if measured_dense:
        result["same_results_as_raw"]["dense"] = sum(
            [h.row for h in dense_ours(i)[0]] == [int(x) for x in dense_raw(i)[1][0] if x >= 0] for i in range(len(sample)))
    if "sparse" in args.modes:
        result["same_results_as_raw"]["sparse"] = sum(
            [h.row for h in sparse_ours(i)] == [d["row"][0] for d in sparse_raw(i)] == list(sparse_raw_rows(i))
            for i in range(len(sample)))
    log(f"same results as raw: {result['same_results_as_raw']}")
    write_result(out, result, info)


if __name__ == "__main__":
    main()
