"""`rag-serve`: answering questions (ask, run) arrives with issues 3 and 4; until then, search with `rag-index search`."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(prog="rag-serve", description=__doc__).parse_args(argv)
    print("rag-serve: no commands yet; search passages with `rag-index search --index DIR`", file=sys.stderr)
    return 2
