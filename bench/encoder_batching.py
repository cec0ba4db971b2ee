"""Diagnostic: passage encoding speed of TextEncoder by token budget per batch, vs sentence-transformers.

index_build.py found our encoder no faster than `SentenceTransformer.encode(batch_size=32)` on this
CPU (goal: >= 1.3x). This measures why: the same seeded sample of stored passages is encoded with
TextEncoder at several `batch_tokens` budgets (the default is 8192) and with ST, in rounds that
rotate the order, and reports passages/s and the speed-up over ST of each configuration.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_INDEX, check_out, default_out, log, machine_info, write_result
from indexer.encoder import TextEncoder, resolve_model_path
from indexer.index import Index, encoder_input


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, default=DEFAULT_INDEX, help="built index to sample passages from (default %(default)s)")
    ap.add_argument("--out", type=Path, default=default_out(__file__), help="result JSON (default %(default)s)")
    ap.add_argument("--passages", type=int, default=1000, help="passages in the sample (default %(default)s)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[8192, 4096, 2048, 1024], help="batch_tokens values")
    ap.add_argument("--rounds", type=int, default=2, help="rounds over all configurations (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="sample seed (default %(default)s)")
    args = ap.parse_args()
    out = check_out(args.out)
    info = machine_info()
    from sentence_transformers import SentenceTransformer

    with Index.open(args.index, None, readonly=True) as index:
        passages = list(index.store.iter_passages(index.generation))
    sample = random.Random(args.seed).sample(passages, args.passages)
    texts = [encoder_input(p.title, p.text) for p in sample]
    encoder = TextEncoder()
    st = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device="cpu")
    encoder(texts[:64]), st.encode(texts[:64], batch_size=32)  # warm-up

    def ours(budget: int) -> None:
        encoder.batch_tokens = budget
        encoder(texts)

    configs = {f"ours batch_tokens={b}": (lambda b=b: ours(b)) for b in args.budgets}
    configs["sentence-transformers batch_size=32"] = lambda: st.encode(texts, batch_size=32)
    seconds: dict[str, list[float]] = {name: [] for name in configs}
    names = list(configs)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            configs[name]()
            seconds[name].append(time.perf_counter() - t0)
            log(f"round {r} {name}: {seconds[name][-1]:.2f}s")
    st_s = statistics.median(seconds["sentence-transformers batch_size=32"])
    result = {
        "index": str(args.index),
        "passages": len(texts),
        "seed": args.seed,
        "configs": {name: {"seconds": s, "median_seconds": statistics.median(s),
                           "passages_per_second": len(texts) / statistics.median(s),
                           "speedup_vs_st": st_s / statistics.median(s)} for name, s in seconds.items()},
    }
    for name, c in result["configs"].items():
        log(f"{name}: {c['passages_per_second']:.1f} passages/s, x{c['speedup_vs_st']:.2f} vs ST")
    write_result(out, result, info)


if __name__ == "__main__":
    main()
