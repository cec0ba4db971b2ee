"""Make data/corpus/wiki-default.jsonl.gz, the corpus the main job indexes when nothing else is given.

A seeded sample of ../shared/data/corpus: 2,000 lead sections of vital articles (broad general
knowledge), 500 Natural Questions paragraphs and 500 SQuAD dev paragraphs. Re-run to reproduce:
    python scripts/make_default_corpus.py --shared ../shared
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path

PICKS = (("wiki-vital.jsonl.gz", 2000, None), ("wiki-nq.jsonl.gz", 500, None), ("wiki-squad.jsonl.gz", 500, "squad-dev-"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data/corpus/wiki-default.jsonl.gz")
    args = parser.parse_args()
    rng = random.Random(0)
    records = []
    for name, count, prefix in PICKS:
        with gzip.open(args.shared / "data/corpus" / name, "rt") as fh:
            pool = [json.loads(line) for line in fh]
        pool = [r for r in pool if prefix is None or r["id"].startswith(prefix)]
        records += rng.sample(pool, count)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(args.out, "wb", mtime=0) as fh:  # mtime=0: byte-identical on every run
        for r in records:
            fh.write((json.dumps(r, ensure_ascii=False) + "\n").encode())
    print(f"wrote {len(records)} records to {args.out}")


if __name__ == "__main__":
    main()
