"""Running a parsed subcommand: a user's mistake becomes `prog: error: ...` and exit status 2.

Kept apart from rag/options.py so that commands which need no index (training from a data file)
import neither FAISS nor tantivy.
"""
from __future__ import annotations

import argparse
import sys

from indexer.manifest import IndexFolderError


def run_command(prog: str, args: argparse.Namespace) -> int:
    """Run a parsed subcommand; a user's mistake prints `prog: error: ...` and returns 2, not a traceback."""
    try:
        return args.run(args)
    except (IndexFolderError, ValueError, RuntimeError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
