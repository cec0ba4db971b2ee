"""The console scripts (`rag-index`, `rag-eval`, `rag-train`, `rag-serve`): each imports its command line only once
running, so that Ctrl-C during the seconds torch and transformers take to import ends the command with a line and
exit status 130, as it does later, rather than a traceback."""
from __future__ import annotations

import importlib
import sys


def _launch(prog: str, module: str, function: str) -> int:
    try:
        main = getattr(importlib.import_module(module), function)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return main()


def rag_index() -> int:
    """`rag-index`: indexer.cli.main."""
    return _launch("rag-index", "indexer.cli", "main")


def rag_eval() -> int:
    """`rag-eval`: trainer.cli.main."""
    return _launch("rag-eval", "trainer.cli", "main")


def rag_train() -> int:
    """`rag-train`: trainer.cli.main_train."""
    return _launch("rag-train", "trainer.cli", "main_train")


def rag_serve() -> int:
    """`rag-serve`: serve.cli.main."""
    return _launch("rag-serve", "serve.cli", "main")
