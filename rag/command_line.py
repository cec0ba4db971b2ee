"""Running a parsed subcommand: a user's mistake becomes `prog: error: ...` and exit status 2.

Kept apart from rag/options.py so that commands which need no index (training from a data file)
import neither FAISS nor tantivy.
"""
from __future__ import annotations

import argparse
import os
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


def typed_command(module: str) -> list[str]:
    """sys.argv as the user typed it: `python -m MODULE ...` rather than the module's file path, or the
    console script's name (`rag-train ...`) rather than its full path. For the records that runs keep."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(os.path.join(*module.split(".")) + ".py"):
        argv[0:1] = ["python", "-m", module]
    elif argv:
        argv[0] = os.path.basename(argv[0])
    return argv
