"""Benchmark: full index build over the four corpus files, and our encoder vs plain sentence-transformers.

Measures: passages, total build seconds and passages/s, split into encoding and indexing seconds
(from the ChangeReport). Then encodes exactly the same passage texts (read back from the store,
sorted by row, as `encoder_input(title, text)`) with `SentenceTransformer(...).encode(texts, batch_size=32)`.
Goals: our encoding passages/s >= 1.3 x sentence-transformers'; max |our stored vector - ST vector| <= 1e-5.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CORPUS_FILES, DEFAULT_INDEX, check_out, default_out, documents, log, machine_info, write_result
from indexer.encoder import TextEncoder, resolve_model_path
from indexer.index import Index, build_index, encoder_input

SPEEDUP_GOAL = 1.3
MAX_DIFF_GOAL = 1e-5


def stored_texts_and_vectors(path: Path, encoder: TextEncoder) -> tuple[list[str], list[str], np.ndarray]:
    """(passage ids, encoder inputs, stored vectors) of every live passage, sorted by store row."""
    with Index.open(path, encoder, readonly=True) as index:
        gen = index.generation
        passages = sorted(index.store.iter_passages(gen), key=lambda p: p.row)
        rows, vectors = [], []
        for r, v in index.store.iter_vectors(gen, index.manifest.dim):
            rows.append(r)
            vectors.append(v)
        rows_all = np.concatenate(rows)
        order = np.argsort(rows_all, kind="stable")
        rows_all, vecs = rows_all[order], np.concatenate(vectors)[order]
        if not np.array_equal(rows_all, np.array([p.row for p in passages])):
            raise RuntimeError("store rows of passages and vectors differ")
        return [p.id for p in passages], [encoder_input(p.title, p.text) for p in passages], vecs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, default=DEFAULT_INDEX, help="index folder to build (default %(default)s)")
    ap.add_argument("--force", action="store_true", help="delete --index first if it exists")
    ap.add_argument("--out", type=Path, default=default_out(__file__), help="result JSON (default %(default)s)")
    ap.add_argument("--limit-docs", type=int, default=0, help="only the first N documents (for testing; 0 = all)")
    ap.add_argument("--skip-st", action="store_true", help="skip the sentence-transformers comparison (for testing)")
    args = ap.parse_args()
    out = check_out(args.out)
    if args.index.exists():
        if not args.force:
            raise SystemExit(f"{args.index} exists: pass --force to delete and rebuild it")
        log(f"deleting {args.index}")
        shutil.rmtree(args.index)
    args.index.parent.mkdir(parents=True, exist_ok=True)
    info = machine_info()

    encoder = TextEncoder()  # loaded before the clock starts, like the ST model below
    docs = documents()
    if args.limit_docs:
        docs = (d for i, d in zip(range(args.limit_docs), docs))
    log(f"building {args.index} from {len(CORPUS_FILES)} files")
    start = time.perf_counter()
    report = build_index(args.index, docs, encoder, progress=True, dense="flat", sparse=True, chunk_words=100)
    total = time.perf_counter() - start
    n = report.passages_encoded
    build = {
        "passages": n,
        "documents": report.documents_added,
        "total_seconds": total,
        "passages_per_second": n / total,
        "encode_seconds": report.encode_seconds,
        "index_seconds": report.index_seconds,
        "encode_passages_per_second": n / report.encode_seconds,
        "other_seconds": total - report.encode_seconds - report.index_seconds,
        "report": report.to_json(),
    }
    log(f"built: {n} passages in {total:.1f}s (encode {report.encode_seconds:.1f}s, index {report.index_seconds:.1f}s)")
    result: dict = {"index": str(args.index), "corpus_files": [str(f) for f in CORPUS_FILES], "build": build}
    write_result(out, result, info)  # keep the build numbers even if the comparison fails

    if not args.skip_st:
        from sentence_transformers import SentenceTransformer

        ids, texts, ours = stored_texts_and_vectors(args.index, encoder)
        st = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device="cpu")
        log(f"sentence-transformers: encoding {len(texts)} passages (batch_size=32)")
        t0 = time.perf_counter()
        theirs = st.encode(texts, batch_size=32)
        st_seconds = time.perf_counter() - t0
        diff = np.abs(np.asarray(theirs, dtype=np.float32) - ours).max(axis=1)
        st_pps = len(texts) / st_seconds
        result["sentence_transformers"] = {
            "passages": len(texts),
            "seconds": st_seconds,
            "passages_per_second": st_pps,
            "speedup_encode": build["encode_passages_per_second"] / st_pps,
            "speedup_end_to_end_build": build["passages_per_second"] / st_pps,
            "speedup_goal": SPEEDUP_GOAL,
            "max_abs_diff": float(diff.max()),
            "max_abs_diff_passage": ids[int(diff.argmax())],
            "mean_of_row_max_abs_diff": float(diff.mean()),
            "max_diff_goal": MAX_DIFF_GOAL,
            "speedup_goal_met": bool(build["encode_passages_per_second"] / st_pps >= SPEEDUP_GOAL),
            "max_diff_goal_met": bool(diff.max() <= MAX_DIFF_GOAL),
        }
        log(f"ST: {st_seconds:.1f}s ({st_pps:.1f}/s), speedup {result['sentence_transformers']['speedup_encode']:.3f}, "
            f"max diff {diff.max():.2e}")
        write_result(out, result, info)


if __name__ == "__main__":
    main()
