"""`rag-serve`: answer questions from the command line (`ask`); the HTTP server (`run`) arrives with issue 4."""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from rag.options import add_pipeline_arguments, pipeline_from_args, run_command


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("rag-serve", _parser().parse_args(argv))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rag-serve", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    ask = commands.add_parser("ask", help="answer one question with its sources",
                              description="Answer a question from the top-k passages of an index and print the sources.")
    add_pipeline_arguments(ask)
    ask.add_argument("--json", action="store_true", help="print one JSON object {question, answer, passages, timings}")
    ask.add_argument("question", help="the question, quoted")
    ask.set_defaults(run=_ask)
    return parser


def _ask(args: argparse.Namespace) -> int:
    pipeline = pipeline_from_args(args)
    answer = pipeline.ask(args.question, k=args.k, mode=args.mode)
    if args.json:
        print(json.dumps(answer.to_json(), ensure_ascii=False))
        return 0
    print(answer.text)
    for n, hit in enumerate(answer.passages, 1):
        snippet = hit.text if len(hit.text) <= 160 else hit.text[:157] + "..."
        print(f"  [{n}] {hit.title} ({hit.id}, score {hit.score:.3f}): {snippet}")
    print(f"  ({answer.timings['total_ms']:.0f} ms: retrieve {answer.timings['retrieve_ms']:.0f}, read {answer.timings['read_ms']:.0f})")
    return 0
