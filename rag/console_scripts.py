"""The console scripts (`rag-index`, `rag-eval`, `rag-train`, `rag-serve`): each imports its command line only once
running, so that Ctrl-C (or `kill`) during the seconds torch and transformers take to import ends the command with a
line and exit status 130, as it does later, rather than a traceback."""
from __future__ import annotations

import importlib
import sys

from indexer.interrupt import interrupt_on_sigterm


def _launch(prog: str, module: str, function: str) -> int:
    interrupt_on_sigterm()  # `kill` while importing ends the command as Ctrl-C does
    # The command line goes on importing (its subcommands' modules) before run_command catches Ctrl-C itself.
    try:
        return getattr(importlib.import_module(module), function)()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


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
