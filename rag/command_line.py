"""Running a parsed subcommand: a user's mistake becomes `prog: error: ...` and exit status 2.

Kept apart from rag/options.py so that commands which need no index (training from a data file)
import neither FAISS nor tantivy.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

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


def check_counts(settings: Any, at_least_one: Sequence[str] = (), at_least_zero: Sequence[str] = ()) -> None:
    """Raise ValueError naming the option (`--batch-size`) when an integer setting of `settings` is below its bound."""
    for bound, names in ((1, at_least_one), (0, at_least_zero)):
        for name in names:
            value = getattr(settings, name)
            if value < bound:
                wanted = "at least 1" if bound == 1 else "0 or more"
                raise ValueError(f"--{name.replace('_', '-')} must be {wanted}, got {value}")


def add_optimizer_options(parser: argparse.ArgumentParser, defaults: Any, batch_unit: str) -> None:
    """--steps, --batch-size, --lr, --warmup with `defaults`' values (a training config)."""
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help=f"{batch_unit} per step")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate (linear warm-up and decay)")
    parser.add_argument("--warmup", type=float, default=defaults.warmup, help="share of the steps spent warming up")


def add_run_options(parser: argparse.ArgumentParser, defaults: Any, seed_help: str) -> None:
    """--seed, --bf16, --threads, --device with `defaults`' values (a training config)."""
    parser.add_argument("--seed", type=int, default=defaults.seed, help=seed_help)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast while training (CPU with avx512_bf16, or GPU)")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch threads (0: torch's choice)")
    parser.add_argument("--device", default=defaults.device, help="cpu, cuda or auto")
