"""Diagnostic: passage encoding speed of TextEncoder by token budget per batch, vs sentence-transformers.

The same seeded sample of stored passages is encoded with TextEncoder at several `batch_tokens`
budgets and with `SentenceTransformer.encode(batch_size=32)`. To be robust to a noisy shared
machine, the sample is cut into slices and every configuration encodes each slice in turn (the
order rotating from slice to slice), so load changes hit all configurations alike; each
configuration's seconds are summed over the slices. Reports passages/s and the speed-up over ST.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_INDEX, check_out, default_out, interleaved_seconds, log, machine_info, write_result
from indexer.encoder import TextEncoder, encoder_input, resolve_model_path
from indexer.index import Index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, default=DEFAULT_INDEX, help="built index to sample passages from (default %(default)s)")
    ap.add_argument("--out", type=Path, default=default_out(__file__), help="result JSON (default %(default)s)")
    ap.add_argument("--passages", type=int, default=1800, help="passages in the sample (default %(default)s)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[8192, 4096, 2048, 1024, 512], help="batch_tokens values")
    ap.add_argument("--slice", type=int, default=300, help="passages per slice (default %(default)s)")
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
    def ours(budget: int, part: list[str]) -> None:
        encoder.batch_tokens = budget
        encoder(part)

    configs = {f"ours batch_tokens={b}": (lambda part, b=b: ours(b, part)) for b in args.budgets}
    configs["sentence-transformers batch_size=32"] = lambda part: st.encode(part, batch_size=32)
    # Warm-up: a first call with new batch shapes costs several times a later one.
    for name in configs:
        configs[name](texts[: args.slice])
    per_slice = interleaved_seconds(configs, texts, args.slice)
    seconds = {name: sum(s) for name, s in per_slice.items()}
    st_name = "sentence-transformers batch_size=32"
    st_s = seconds[st_name]
    result = {
        "index": str(args.index),
        "passages": len(texts),
        "slice": args.slice,
        "seed": args.seed,
        # A burst of load on one slice skews the sums; the median over slices of the paired ratio does not.
        "configs": {name: {"seconds": s, "slice_seconds": per_slice[name], "passages_per_second": len(texts) / s,
                           "speedup_vs_st": st_s / s,
                           "median_slice_speedup_vs_st": statistics.median(
                               st / ours for st, ours in zip(per_slice[st_name], per_slice[name]))}
                    for name, s in seconds.items()},
    }
    for name, c in result["configs"].items():
        log(f"{name}: {c['passages_per_second']:.1f} passages/s, x{c['speedup_vs_st']:.2f} vs ST "
            f"(median over slices x{c['median_slice_speedup_vs_st']:.2f})")
    write_result(out, result, info)


if __name__ == "__main__":
    main()
