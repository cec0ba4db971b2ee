"""Benchmark diagnostic: where dense retrieval's recall@5 misses land, before and after joint training.

For each question of the joint-training benchmark's sets (500 seeded questions each of squad-open-dev and the gold_ids
records of nq-open-test) whose gold passage is not in the dense top 5, it says whether the gold is at ranks 6-20 or
beyond, and whether a passage of the gold document's own article (same title) is in the top 5 or first. A miss with
its article's paragraph on top is a confusion between paragraphs of one article; a miss without is a wrong topic.
`--run RUN_DIR` measures a `rag-train joint` run's exported encoder over the corpus as that run's bench measured it
(its re-embedded corpus when it trained the passage side: reused if bench/joint_training.py already made it, else
re-embedded, about 20 minutes on two cores); without it, the untrained index.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.common import DEFAULT_INDEX, default_out, log, machine_info, results_out, write_result
from bench.joint_training import question_sets, trained_index
from indexer.index import Index
from indexer.records import SearchHit
from rag.retriever import DualEncoder
from trainer.joint_training import article_titles
from trainer.training_index import TrainingIndex
from trainer.qa_data import QARecord


def miss_kinds(index: Index, records: Sequence[QARecord], found: Sequence[Sequence[SearchHit]]) -> dict[str, Any]:
    """Counts of hits at 5 and of the misses' kinds, given each record's top 20."""
    article_of = article_titles(index, records)
    counts: Counter[str] = Counter()
    for record, hits in zip(records, found):
        gold = set(record.gold_ids)
        rank = next((i for i, h in enumerate(hits) if h.doc_id in gold), None)
        if rank is not None and rank < 5:
            counts["hit_at_5"] += 1
            continue
        counts["miss_gold_at_6_to_20" if rank is not None else "miss_gold_beyond_20"] += 1
        articles = {article_of[g] for g in gold if g in article_of}
        counts["miss_same_article_in_top_5"] += any(h.title in articles for h in hits[:5])
        counts["miss_same_article_first"] += bool(hits) and hits[0].title in articles
    return {"n": len(records), **{key: counts[key] for key in ("hit_at_5", "miss_gold_at_6_to_20", "miss_gold_beyond_20",
                                                                "miss_same_article_in_top_5", "miss_same_article_first")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=DEFAULT_INDEX, help="whole-corpus index, only read (default %(default)s)")
    parser.add_argument("--run", type=Path, default=None, help="a rag-train joint run folder (its export/encoder); default: untrained")
    parser.add_argument("--limit", type=int, default=500, help="questions per set (seeded sample, seed 0)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default bench/results/retrieval_misses.json; with another --limit, retrieval_misses_limitN.json)")
    args = parser.parse_args()
    if args.run is not None and not (args.run / "export" / "encoder").is_dir():
        parser.error(f"--run {args.run}: no export/encoder there (a finished rag-train joint run folder has one)")
    out, info = results_out(parser, args, default_out(__file__)), machine_info()
    torch.set_num_threads(args.threads)
    index = Index.open(args.index, readonly=True)
    with tempfile.TemporaryDirectory() as folder:
        if args.run is None:
            retriever, searched = DualEncoder(index.manifest.encoder), TrainingIndex(index, Path(folder))
        else:
            retriever = DualEncoder(str(args.run / "export" / "encoder"))
            trained_both_sides = not json.loads((args.run / "config.json").read_text()).get("query_side_only", False)
            searched = trained_index(index, args.run, retriever) if trained_both_sides else TrainingIndex(index, Path(folder))
        retriever.eval()
        result: dict[str, Any] = {"run": str(args.run) if args.run else None, "sets": {}}
        for name, records in question_sets(args.limit).items():
            vectors = retriever.encode_queries([r.question for r in records])
            result["sets"][name] = miss_kinds(index, records, searched.search(vectors, 20))
            log(name, json.dumps(result["sets"][name]))
    write_result(out, result, info)


if __name__ == "__main__":
    main()
