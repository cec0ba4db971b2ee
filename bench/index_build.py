"""Benchmark: full index build over the four corpus files, with our encoder vs plain sentence-transformers.

Measures: passages, build seconds and passages/s, split into encoding and indexing seconds. The
comparison with `SentenceTransformer(...).encode(texts, batch_size=32)` is interleaved so that a
noisy shared machine slows both sides alike: every time the build calls the encoder (one slice of
about 1,400 passages per 1,024 documents; every `--compare-every`-th call), the same texts are also
encoded by sentence-transformers, alternating which of the two runs first. Each side's seconds are summed over the compared slices; the ST
time and the vector check are taken out of the build figures. Both encoders first warm up on one
such slice, untimed.
Goals: our encoding passages/s >= 1.3 x sentence-transformers'; max |our vector - ST vector| <= 1e-5.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CORPUS_FILES, default_out, documents, log, machine_info, results_out, write_result
from indexer.chunking import chunk_document
from indexer.encoder import TextEncoder, encoder_input, resolve_model_path
from indexer.index import build_index

SPEEDUP_GOAL = 1.3
MAX_DIFF_GOAL = 1e-5
# Not the shared index other benchmarks and people read: this script deletes its folder with --force.
BUILD_INDEX = Path(__file__).resolve().parent.parent / "indexes" / "bench-build"
WARM_UP_DOCS = 1024  # one encoder call of the build


class InterleavedEncoder:
    """Our encoder as the build sees it; each call also times sentence-transformers on the same texts."""

    def __init__(self, ours: TextEncoder, st: Any, after_slice: Callable[[], None], compare_every: int = 1) -> None:
        self.ours, self.st, self.after_slice, self.compare_every = ours, st, after_slice, compare_every
        self.calls = 0
        self.ours_seconds = 0.0  # over every slice, compared or not
        self.name, self.dim, self.normalize = ours.name, ours.dim, ours.normalize
        self.tokenizer = ours.tokenizer
        self.slices: list[dict[str, Any]] = []
        self.max_diff, self.max_diff_where = 0.0, ""
        self.extra_seconds = 0.0  # everything this wrapper adds to the build: ST and the check

    def __call__(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Our vectors for `texts` (what the build stores); ST runs before or after, alternately."""
        self.calls += 1
        if (self.calls - 1) % self.compare_every:
            t0 = time.perf_counter()
            vectors = self.ours(texts)
            self.ours_seconds += time.perf_counter() - t0
            return vectors
        enter = time.perf_counter()
        ours_first = len(self.slices) % 2 == 0
        if not ours_first:
            st_seconds, theirs = self._st(texts)
        t0 = time.perf_counter()
        vectors = self.ours(texts)
        ours_seconds = time.perf_counter() - t0
        self.ours_seconds += ours_seconds
        if ours_first:
            st_seconds, theirs = self._st(texts)
        diff = np.abs(theirs - vectors).max(axis=1) if len(texts) else np.zeros(0)
        if len(diff) and diff.max() > self.max_diff:
            self.max_diff, self.max_diff_where = float(diff.max()), f"slice {len(self.slices)}, text {int(diff.argmax())}"
        self.slices.append({"passages": len(texts), "ours_seconds": ours_seconds, "st_seconds": st_seconds,
                            "ours_first": ours_first})
        ours_total = sum(s["ours_seconds"] for s in self.slices)
        st_total = sum(s["st_seconds"] for s in self.slices)
        log(f"slice {len(self.slices)}: {len(texts)} passages, ours {ours_seconds:.1f}s, ST {st_seconds:.1f}s; "
            f"so far {sum(s['passages'] for s in self.slices)} passages, speed-up {st_total / ours_total:.3f}")
        self.after_slice()
        self.extra_seconds += time.perf_counter() - enter - ours_seconds
        return vectors

    def _st(self, texts: Sequence[str]) -> tuple[float, np.ndarray]:
        t0 = time.perf_counter()
        theirs = self.st.encode(list(texts), batch_size=32, convert_to_numpy=True)
        return time.perf_counter() - t0, np.asarray(theirs, dtype=np.float32)


def comparison(encoder: InterleavedEncoder) -> dict[str, Any]:
    """Our encoder vs sentence-transformers over the slices encoded so far."""
    ours_seconds = sum(s["ours_seconds"] for s in encoder.slices)
    st_seconds = sum(s["st_seconds"] for s in encoder.slices)
    passages = sum(s["passages"] for s in encoder.slices)
    speedup = st_seconds / ours_seconds
    return {
        "batch_size": 32,
        "passages": passages,
        "ours_seconds": ours_seconds,
        "seconds": st_seconds,
        "passages_per_second": passages / st_seconds,
        "speedup_encode": speedup,
        # Robust to a burst of load on a few slices: the median of the per-slice paired ratios.
        "median_slice_speedup": statistics.median(s["st_seconds"] / s["ours_seconds"] for s in encoder.slices),
        "speedup_goal": SPEEDUP_GOAL,
        "speedup_goal_met": bool(speedup >= SPEEDUP_GOAL),
        "max_abs_diff": encoder.max_diff,
        "max_abs_diff_where": encoder.max_diff_where,
        "max_diff_goal": MAX_DIFF_GOAL,
        "max_diff_goal_met": bool(encoder.max_diff <= MAX_DIFF_GOAL),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, default=BUILD_INDEX, help="index folder to build (default %(default)s)")
    ap.add_argument("--force", action="store_true", help="delete --index first if it exists")
    ap.add_argument("--out", type=Path, default=None,
                    help="result JSON (default bench/results/index_build.json; with --limit-docs N, index_build_limitN.json)")
    ap.add_argument("--compare-every", type=int, default=2,
                    help="compare with ST on every Nth slice (default %(default)s: half the cost, still paired)")
    ap.add_argument("--limit-docs", type=int, default=0, help="only the first N documents (for testing; 0 = all)")
    args = ap.parse_args()
    # A trial on the first N documents must not replace the full build's figures (index_update.py reads them).
    out = results_out(ap, args, default_out(__file__), limit="limit_docs")
    if args.index.exists():
        if not args.force:
            raise SystemExit(f"{args.index} exists: pass --force to delete and rebuild it")
        log(f"deleting {args.index}")
        shutil.rmtree(args.index)
    args.index.parent.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    from sentence_transformers import SentenceTransformer

    # Both models load and warm up before the clock starts: a first call with new batch shapes
    # costs several times a later one. The warm-up encodes the passages of the first documents.
    ours = TextEncoder()
    st = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device="cpu")
    warm_docs = min(WARM_UP_DOCS, args.limit_docs or WARM_UP_DOCS)
    warm = [encoder_input(p.title, p.text) for d in islice(documents(), warm_docs) for p in chunk_document(d, words=100)]
    log(f"warm-up: {len(warm)} passages, both encoders")
    ours(warm), st.encode(warm, batch_size=32)
    head = {"index": str(args.index), "corpus_files": [str(f) for f in CORPUS_FILES], "batch_tokens": ours.batch_tokens,
            "compare_every": args.compare_every}

    def partial_result() -> None:
        # A run of an hour or more: keep what it has measured so far in case it is stopped.
        write_result(out, {**head, "complete": False, "sentence_transformers": comparison(encoder),
                           "slices": encoder.slices}, info)

    encoder = InterleavedEncoder(ours, st, partial_result, args.compare_every)
    docs = documents()
    if args.limit_docs:
        docs = (d for i, d in zip(range(args.limit_docs), docs))
    log(f"building {args.index} from {len(CORPUS_FILES)} files, batch_tokens={ours.batch_tokens}")
    start = time.perf_counter()
    report = build_index(args.index, docs, encoder, progress=False, dense="flat", sparse=True, chunk_words=100)
    total = time.perf_counter() - start - encoder.extra_seconds
    n = report.passages_encoded
    versus = comparison(encoder)
    ours_seconds = encoder.ours_seconds
    result = {
        **head,
        "complete": True,
        "build": {
            "passages": n,
            "documents": report.documents_added,
            "total_seconds": total,
            "passages_per_second": n / total,
            "encode_seconds": ours_seconds,
            "index_seconds": report.index_seconds,
            "encode_passages_per_second": n / ours_seconds,
            "other_seconds": total - ours_seconds - report.index_seconds,
        },
        "sentence_transformers": versus,
        "slices": encoder.slices,
    }
    log(f"built {n} passages in {total:.1f}s (encode {ours_seconds:.1f}s, index {report.index_seconds:.1f}s); "
        f"ST {versus['seconds']:.1f}s; speed-up {versus['speedup_encode']:.3f} "
        f"(median over slices {versus['median_slice_speedup']:.3f}); max diff {encoder.max_diff:.2e}")
    write_result(out, result, info)


if __name__ == "__main__":
    main()
