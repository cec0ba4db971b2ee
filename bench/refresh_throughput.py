"""Diagnostic: passages/s of the passage side re-embedding stored passages, as a joint-training refresh does.

`DualEncoder.encode` now batches texts longest first, so each batch pads to texts of about its own length,
16 at a time on a CPU; before, it took them 64 at a time in the order given (a refresh's: the store's,
document by document), each batch padded to its longest passage. Both run here on the same passages: a contiguous run of the store (its real order)
from a seeded offset, cut into slices that each configuration encodes in turn, the order rotating, after an
untimed warm-up, so load on this shared machine hits both alike. The sort only sees one slice at a time,
where a refresh sorts its whole shard, so the speed-up here is a lower bound.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from bench.common import DEFAULT_INDEX, check_out, default_out, interleaved_seconds, log, machine_info, write_result
from indexer.encoder import encoder_input
from indexer.index import Index
from rag.retriever import DualEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=DEFAULT_INDEX, help="built index to take passages from (default %(default)s)")
    parser.add_argument("--passages", type=int, default=2000, help="passages encoded by each configuration")
    parser.add_argument("--slice", type=int, default=500, help="passages per slice")
    parser.add_argument("--batch-size", type=int, default=None, help="DualEncoder.encode's batch size (default its own)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run's offset in the store")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=default_out(__file__))
    args = parser.parse_args()
    out, info = check_out(args.out), machine_info()
    torch.set_num_threads(args.threads)
    with Index.open(args.index, None, readonly=True) as index:
        passages = list(index.store.iter_passages(index.generation))
        encoder = DualEncoder(index.manifest.encoder).eval()
    start = random.Random(args.seed).randrange(max(1, len(passages) - args.passages))
    texts = [encoder_input(p.title, p.text) for p in passages[start : start + args.passages]]

    @torch.inference_mode()
    def in_given_order(part: list[str]) -> np.ndarray:
        """What `encode` did before: consecutive batches, each padded to its longest text."""
        return np.concatenate([encoder(part[i : i + 64], "passage").float().numpy() for i in range(0, len(part), 64)])

    configs: dict[str, Callable[[list[str]], np.ndarray]] = {
        "given order, 64 a batch (before)": in_given_order,
        "longest first (DualEncoder.encode)": lambda part: encoder.encode(part, "passage", args.batch_size)}
    names = list(configs)
    warm = texts[: args.slice]
    np.testing.assert_allclose(*(configs[name](warm) for name in names), atol=1e-4)  # same vectors, same rows
    per_slice = interleaved_seconds(configs, texts, args.slice)
    seconds = {name: sum(s) for name, s in per_slice.items()}
    before, now = names
    result = {
        "index": str(args.index), "store_offset": start, "passages": len(texts), "slice": args.slice,
        "batch_size": args.batch_size, "threads": args.threads,
        "configs": {name: {"seconds": round(s, 2), "slice_seconds": [round(x, 2) for x in per_slice[name]],
                           "passages_per_second": round(len(texts) / s, 1)} for name, s in seconds.items()},
        "speedup": round(seconds[before] / seconds[now], 3),
        # A burst of load on one slice skews the sums; the median over slices of the paired ratio does not.
        "median_slice_speedup": round(statistics.median(b / n for b, n in zip(per_slice[before], per_slice[now])), 3),
    }
    for name, c in result["configs"].items():
        log(f"{name}: {c['passages_per_second']} passages/s")
    log(f"longest first: x{result['speedup']} (median over slices x{result['median_slice_speedup']})")
    write_result(out, result, info)


if __name__ == "__main__":
    main()
