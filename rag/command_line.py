"""Running a parsed subcommand: a user's mistake becomes `prog: error: ...` and exit status 2.

Kept apart from rag/options.py so that commands which need no index (training from a data file)
import neither FAISS nor tantivy.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from contextlib import contextmanager, suppress
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from indexer.interrupt import interrupt_on_sigterm
from indexer.locks import file_lock
from indexer.manifest import IndexFolderError

Config = TypeVar("Config")


def run_command(prog: str, args: argparse.Namespace) -> int:
    """Run a parsed subcommand; a user's mistake prints `prog: error: ...` and returns 2, not a traceback. So does a
    file the system refuses (OSError: a read-only --out, a folder where a file should be)."""
    interrupt_on_sigterm()
    try:
        warn_of_emulated_bf16(prog, args)
        return args.run(args)
    except (IndexFolderError, ValueError, RuntimeError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        _print_notes(prog, exc)
        return 2
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"{prog}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        _print_notes(prog, exc)
        return 2
    except KeyboardInterrupt as exc:
        print(f"{prog}: interrupted", file=sys.stderr)
        _print_notes(prog, exc)
        return 130


def warn_of_emulated_bf16(prog: str, args: argparse.Namespace) -> None:
    """Print a warning when the command's --bf16 asks for bfloat16 autocast on its --device (default auto) and that
    device only emulates bfloat16 (`emulated_bf16_warning`): a training step on an AVX2-only CPU took 9 to 18 times as long."""
    if getattr(args, "bf16", False):
        from indexer.encoder import emulated_bf16_warning  # torch: only for the commands that train

        warning = emulated_bf16_warning("--bf16", getattr(args, "device", None))
        if warning:
            print(f"{prog}: warning: {warning}", file=sys.stderr)


def _print_notes(prog: str, exc: BaseException) -> None:
    """What the code on the way out added to the exception (`new_run_folder`: what became of --out)."""
    for note in getattr(exc, "__notes__", []):
        print(f"{prog}: {note}", file=sys.stderr)


def typed_command(module: str) -> list[str]:
    """sys.argv as the user typed it: `python -m MODULE ...` rather than the module's file path, or the
    console script's name (`rag-train ...`) rather than its full path. For the records that runs keep."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(os.path.join(*module.split(".")) + ".py"):
        argv[0:1] = ["python", "-m", module]
    elif argv:
        argv[0] = os.path.basename(argv[0])
    return argv


def finite_float(text: str) -> float:
    """argparse type of a number option: a float, refusing nan and inf (a learning rate of inf trains NaN weights)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def check_counts(settings: Any, at_least_one: Sequence[str] = (), at_least_zero: Sequence[str] = (),
                 positive: Sequence[str] = ()) -> None:
    """Raise ValueError naming the option (`--batch-size`) when a setting of `settings` is below its bound: a count
    below 1 (`at_least_one`), a number below 0 or NaN (`at_least_zero`: counts, a weight decay), or a number that is not
    above 0 (`positive`: learning rates, temperatures)."""
    for bound, names in ((1, at_least_one), (0, at_least_zero)):
        for name in names:
            value = getattr(settings, name)
            if not value >= bound:  # also refuses NaN
                wanted = "at least 1" if bound == 1 else "0 or more"
                raise ValueError(f"--{name.replace('_', '-')} must be {wanted}, got {value}")
    for name in positive:
        value = getattr(settings, name)
        if not value > 0:  # also refuses NaN
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")


def check_warmup(warmup: float) -> None:
    """Raise ValueError unless --warmup (add_optimizer_options) is a share of the steps, from 0 to below 1."""
    if not 0 <= warmup < 1:
        raise ValueError(f"--warmup is a share of the steps, from 0 to below 1; got {warmup}")


def config_from_args(cls: type[Config], args: argparse.Namespace, **given: Any) -> Config:
    """A `cls` config (a dataclass) from the options named as its fields; `given` sets those an option spells
    otherwise (--no-nq, a comma-separated list). A field with neither keeps its default."""
    options = {f.name: getattr(args, f.name) for f in fields(cls) if f.init and hasattr(args, f.name)}  # type: ignore[arg-type]
    return cls(**(options | given))


def check_new_folder(out: Path, hint: str = "choose a new folder") -> None:
    """Raise ValueError unless --out `out` can take a new run: a folder that does not exist yet, or an empty one.
    `hint` says what to do instead when it holds something."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder: choose a new folder")
    if out.is_dir() and any(child.name != RUNNING or not _stale(child) for child in out.iterdir()):
        raise ValueError(f"--out {out} is not empty: {hint}")


def check_out_file(out: Path, example: str) -> None:
    """Raise ValueError unless --out `out` names a file that can be written once its folders are made: not a folder,
    and under no file. Checked before the work, which may take minutes; nothing is created (`example`: a file name to
    suggest inside a folder given instead)."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder: give the file to write, e.g. {out / example}")
    above = next((p for p in out.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise ValueError(f"--out {out}: {above} is a file, not a folder")


def _stale(marker: Path) -> bool:
    """Whether a run's `.running` marker holds no lock: left by a run killed outright (SIGKILL, out of memory), which
    wrote nothing else, so the same command may run again."""
    with file_lock(marker) as held:
        return held


@dataclass
class RunFolder:
    """A run's --out while the run goes on (`new_run_folder`)."""

    path: Path
    saved: bool = False  # the run's model is saved: a failure from here on leaves the folder as it is


RUNNING = ".running"  # in --out while a run writes there, locked: another run into the folder is refused


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold `out`/.running locked while a run writes in `out` (a new run, or one resumed there); ValueError when another
    run holds it. A lock, not the file alone: one left by a run killed outright holds nothing."""
    marker = out / RUNNING
    with file_lock(marker) as held:
        if not held:
            raise ValueError(f"another run is writing in {out} (it holds {marker}): wait for it to end, or choose another folder")
        try:
            yield
        finally:
            with suppress(OSError):  # never in place of the run's own error
                marker.unlink()


def _note(kept: str | Callable[[BaseException], str], exc: BaseException) -> str:
    """The note a run's kept checkpoint gets: `kept`, or what it says of `exc`."""
    return kept(exc) if callable(kept) else kept


@contextmanager
def resumed_run_folder(out: Path, kept: str | Callable[[BaseException], str]) -> Iterator[None]:
    """A run carried on in its folder `out`: locked as `run_lock` does, and an exception that ends it gets the note
    `kept` (where its checkpoint is, and how to carry on again; or a function of the exception that says so)."""
    with run_lock(out):
        try:
            yield
        except BaseException as exc:
            exc.add_note(_note(kept, exc))
            raise


@contextmanager
def new_run_folder(out: Path, keep: str | None = None, kept: str | Callable[[BaseException], str] = "") -> Iterator[RunFolder]:
    """Create --out `out` for a run, and leave it as it was found if the run does not finish (an error, Ctrl-C,
    SIGTERM), so that the same command can run again. The folder stays as it is instead once the run has set
    `saved`, or once `keep`, a path in it, exists (the file a checkpoint writes last); the exception then gets a note
    saying so (`kept` for a checkpoint: where it is and what it is good for; or a function of the exception that
    says so). ValueError, before anything is touched,
    unless `out` is new or empty (`check_new_folder`) and no other run has taken it meanwhile."""
    check_new_folder(out)
    if out.is_symlink() and not out.exists():
        raise ValueError(f"--out {out} is a link to {os.readlink(out)}, which does not exist: make that folder or choose another")
    made = [folder for folder in (*reversed(out.parents), out) if not folder.exists()]  # outermost first
    try:
        for folder in made:
            folder.mkdir(exist_ok=folder != out)
    except FileExistsError:  # of two runs given the same new --out, the second to make it
        raise ValueError(f"--out {out} was taken by another run meanwhile: choose a new folder") from None
    run = RunFolder(out)
    # Locked before the clean-up below can apply: a run that finds the folder empty but another's is refused untouched.
    with run_lock(out):
        try:
            yield run
        except BaseException as exc:
            if run.saved:
                exc.add_note(f"the run's model is saved in {out}; what the run writes after it is missing")
            elif keep is not None and (out / keep).exists():
                exc.add_note(_note(kept, exc) or f"{out / keep} is kept")
            else:
                try:
                    _remove_run(out, made)
                    exc.add_note(f"the unfinished run's files are removed from {out}")
                except OSError as error:  # the run's own error is the one to report
                    exc.add_note(f"the unfinished run's files could not all be removed from {out}: {error}")
            raise


def _remove_run(out: Path, made: list[Path]) -> None:
    """What a run wrote in `out`, and the folders it made (`made`, outermost first) where they are left empty. A folder
    that was there is emptied, not removed: it may be a link or a mount point, with its own owner and mode."""
    if not made:
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    for folder in reversed(made):
        if folder == out:
            shutil.rmtree(out)
        elif not any(folder.iterdir()):
            folder.rmdir()


def add_optimizer_options(parser: argparse.ArgumentParser, defaults: Any, batch_unit: str) -> None:
    """--steps, --batch-size, --lr, --warmup with `defaults`' values (a training config)."""
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help=f"{batch_unit} per step")
    parser.add_argument("--lr", type=finite_float, default=defaults.lr, help="peak learning rate (linear warm-up and decay)")
    parser.add_argument("--warmup", type=finite_float, default=defaults.warmup, help="share of the steps spent warming up")


def add_run_options(parser: argparse.ArgumentParser, defaults: Any, seed_help: str) -> None:
    """--seed, --bf16, --threads, --device with `defaults`' values (a training config)."""
    parser.add_argument("--seed", type=int, default=defaults.seed, help=seed_help)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast while training (CPU with avx512_bf16, or GPU)")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch threads (0: torch's choice)")
    parser.add_argument("--device", default=defaults.device, help="cpu, cuda or auto")
