"""Benchmark: incremental upsert and delete on a copy of a built index.

Measures, on a temporary copy of --index (the built index is not changed):
- upsert of 1,000 seeded corpus documents with a sentence appended to their text, in one call:
  seconds, passages encoded, and the time to encode exactly those changed passages with the
  encoder alone. Goal: upsert seconds <= 1.10 x encode-only seconds (median of 3 rounds, each with a
  different sentence; which of the two runs first alternates between rounds);
- delete of 1,000 other documents in one call: seconds;
- both as a fraction of the full build time, read from the build result JSON.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_INDEX, RESULTS_DIR, check_out, default_out, documents, log, machine_info, write_result
from indexer.chunking import chunk_document
from indexer.encoder import TextEncoder, encoder_input
from indexer.index import Index
from indexer.records import Document
from indexer.store import passage_digest

RATIO_GOAL = 1.10
SENTENCES = (" Updated at benchmark time.", " Updated again at benchmark time.", " Updated a third time at benchmark time.")


def passages_to_encode(index: Index, docs: list[Document]) -> list[str]:
    """Encoder inputs of the passages an upsert of `docs` must encode: those whose id and digest are
    not already live, and whose digest is not among the documents' current passages (reused vectors)."""
    m = index.manifest
    old = index.store.live_passages([d.id for d in docs])
    old_digests = {digest for _, digest, _ in old.values()}
    texts = []
    for doc in docs:
        for p in chunk_document(doc, words=m.chunk_words, overlap=m.chunk_overlap):
            digest = passage_digest(p.title, p.text)
            if not (p.id in old and old[p.id][1] == digest) and digest not in old_digests:
                texts.append(encoder_input(p.title, p.text))
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, default=DEFAULT_INDEX, help="built index folder, copied first (default %(default)s)")
    ap.add_argument("--build-result", type=Path, default=RESULTS_DIR / "index_build.json",
                    help="index_build.py result, for the full build time (default %(default)s)")
    ap.add_argument("--out", type=Path, default=default_out(__file__), help="result JSON (default %(default)s)")
    ap.add_argument("--docs", type=int, default=1000, help="documents to upsert, and to delete (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="upsert/encode rounds (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="document sample seed (default %(default)s)")
    args = ap.parse_args()
    out = check_out(args.out)
    info = machine_info()
    if args.rounds > len(SENTENCES):
        raise SystemExit(f"--rounds must be <= {len(SENTENCES)}")
    build = json.loads(args.build_result.read_text())["build"]

    encoder = TextEncoder()
    with tempfile.TemporaryDirectory(prefix="bench-update-") as tmp:
        copy = Path(tmp) / "index"
        log(f"copying {args.index} to {copy}")
        shutil.copytree(args.index, copy)
        index = Index.open(copy, encoder)
        before = index.stats()
        live_ids = set(index.store.live_documents([d.id for d in documents()]))
        corpus = [d for d in documents() if d.id in live_ids]
        rng = random.Random(args.seed)
        picked = rng.sample(corpus, 2 * args.docs)
        to_update, to_delete = picked[: args.docs], picked[args.docs :]
        log(f"{len(corpus)} documents in the index; updating {len(to_update)}, then deleting {len(to_delete)}")
        encoder(["warm up the encoder", "and its threads"])

        rounds = []
        for r in range(args.rounds):
            docs = [Document(d.id, d.title, d.text + SENTENCES[r], d.meta) for d in to_update]
            texts = passages_to_encode(index, docs)
            upsert_first = r % 2 == 0
            if not upsert_first:
                t0 = time.perf_counter(); encoder(texts); encode_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            report = index.upsert(docs)
            upsert_s = time.perf_counter() - t0
            if upsert_first:
                t0 = time.perf_counter(); encoder(texts); encode_s = time.perf_counter() - t0
            if report.passages_encoded != len(texts):
                raise RuntimeError(f"upsert encoded {report.passages_encoded} passages, expected {len(texts)}")
            rounds.append({"sentence": SENTENCES[r], "upsert_first": upsert_first, "upsert_seconds": upsert_s,
                           "encode_only_seconds": encode_s, "ratio": upsert_s / encode_s, "report": report.to_json()})
            log(f"round {r}: upsert {upsert_s:.2f}s ({report.passages_encoded} encoded, report encode "
                f"{report.encode_seconds:.2f}s + index {report.index_seconds:.2f}s), encode-only {encode_s:.2f}s")

        t0 = time.perf_counter()
        delete_report = index.delete([d.id for d in to_delete])
        delete_s = time.perf_counter() - t0
        log(f"delete: {delete_s:.2f}s, {delete_report.passages_removed} passages removed")
        after = index.stats()
        index.close()
        if after["documents"] != before["documents"] - len(to_delete):
            raise RuntimeError(f"document count {before['documents']} -> {after['documents']} after deleting {len(to_delete)}")

    ratio = statistics.median(r["ratio"] for r in rounds)
    upsert_median = statistics.median(r["upsert_seconds"] for r in rounds)
    result = {
        "index": str(args.index),
        "documents": args.docs,
        "seed": args.seed,
        "stats_before": before,
        "stats_after": after,
        "upsert_rounds": rounds,
        "upsert": {
            "median_seconds": upsert_median,
            "median_encode_only_seconds": statistics.median(r["encode_only_seconds"] for r in rounds),
            "median_ratio_upsert_to_encode": ratio,
            "goal": RATIO_GOAL,
            "goal_met": bool(ratio <= RATIO_GOAL),
            "fraction_of_full_build": upsert_median / build["total_seconds"],
        },
        "delete": {
            "seconds": delete_s,
            "passages_removed": delete_report.passages_removed,
            "fraction_of_full_build": delete_s / build["total_seconds"],
            "report": delete_report.to_json(),
        },
        "full_build_seconds": build["total_seconds"],
        "build_result": str(args.build_result),
    }
    log(f"median upsert/encode ratio {ratio:.3f} (goal <= {RATIO_GOAL})")
    write_result(out, result, info)


if __name__ == "__main__":
    main()
