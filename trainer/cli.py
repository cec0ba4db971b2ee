"""`rag-eval` (answer quality) and `rag-train` (training; its commands arrive with issues 6-8)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from rag.options import add_pipeline_arguments, pipeline_from_args, run_command


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("rag-eval", _eval_parser().parse_args(argv))


def _eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rag-eval", description="Evaluate a pipeline; each command prints one JSON object.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    qa = commands.add_parser("qa", help="EM, F1, recall and latency on a QA file",
                             description="Answer every question of a QA file (JSON lines {id, question, answers, gold_ids?}) and print "
                                         "{n, em, f1, recall@1, recall@5, recall@20, answer_recall@5, latency_p50_ms, latency_p95_ms}.")
    add_pipeline_arguments(qa, index_required=False)
    qa.add_argument("--qa", required=True, type=Path, help="QA file, .jsonl or .jsonl.gz")
    qa.add_argument("--limit", type=int, default=None, help="evaluate a seeded random sample of N questions")
    qa.add_argument("--seed", type=int, default=0, help="seed of the --limit sample (default 0)")
    qa.add_argument("--batch-size", type=int, default=1, help="questions answered together (default 1: honest per-question latency)")
    qa.add_argument("--predictions", type=Path, default=None, help="also write one JSON line per question to this file")
    qa.set_defaults(run=_qa)
    return parser


def _qa(args: argparse.Namespace) -> int:
    from trainer.evaluate import evaluate_qa
    from trainer.qa_data import read_qa, sample

    if args.index is None and args.k != 0:
        raise ValueError("--index is required unless --k 0 (closed book)")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    records = sample(read_qa(args.qa), args.limit, args.seed)
    pipeline = pipeline_from_args(args)
    summary, rows = evaluate_qa(pipeline, records, k=args.k, mode=args.mode, batch_size=args.batch_size)
    if args.predictions:
        with open(args.predictions, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    print(json.dumps(summary))
    return 0


def main_train(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(prog="rag-train", description="Training commands arrive with issues 6-8.").parse_args(argv)
    print("rag-train: no commands yet", file=sys.stderr)
    return 2
