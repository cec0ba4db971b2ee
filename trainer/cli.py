"""`rag-eval` and `rag-train`: their commands arrive with issues 3 (qa evaluation), 6 and 7 (training)."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


def _not_yet(prog: str, what: str, argv: Sequence[str] | None) -> int:
    argparse.ArgumentParser(prog=prog, description=f"{what} (not available yet).").parse_args(argv)
    print(f"{prog}: no commands yet: {what} is still to be built", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    return _not_yet("rag-eval", "evaluation of answers and edits", argv)


def main_train(argv: Sequence[str] | None = None) -> int:
    return _not_yet("rag-train", "joint retriever-reader training and few-shot finetuning", argv)
