"""Helpers shared by the benchmark scripts: corpus/QA loading, machine info, result files, stats."""
from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import hashlib
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from indexer.corpus import read_documents
from indexer.records import Document
from trainer.machine import cpu_capability, cpu_model
from trainer.shared_data import SHARED_DATA

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
CORPUS_FILES = sorted((SHARED_DATA / "corpus").glob("*.jsonl.gz"))
QA_DIR = SHARED_DATA / "qa"
DEFAULT_INDEX = BENCH_DIR.parent / "indexes" / "shared"
# Packages whose source a result depends on; code_info hashes each one's *.py.
CODE_PACKAGES = ("indexer", "rag", "trainer", "serve")
# For telling a contended run: CPU seconds used by this process vs wall seconds (2 cores: at most ~2x).
_WALL0, _CPU0 = time.perf_counter(), time.process_time()


def log(*parts: object) -> None:
    """Progress line on stderr, with a wall-clock time."""
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def documents(files: list[Path] | None = None) -> Iterator[Document]:
    """All documents of the corpus files, in file order."""
    return itertools.chain.from_iterable(read_documents(f) for f in (files or CORPUS_FILES))


def read_qa(name: str) -> list[dict[str, Any]]:
    """Records {id, question, answers, gold_ids} of a QA file such as 'squad-open-dev'."""
    with gzip.open(QA_DIR / f"{name}.jsonl.gz", "rt") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def machine_info() -> dict[str, Any]:
    """CPU count, torch threads and versions, so results can be compared across machines."""
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "cpu_capability": cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
        "code": code_info(),
    }


def code_info() -> dict[str, Any]:
    """The git commit, whether the tree differs from it, and a hash of each package's *.py as run (others may be
    editing the working tree, so the commit alone does not say what ran)."""
    root = BENCH_DIR.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        # Result files are written by the benchmarks themselves: a changed one says nothing about the code that ran.
        status = subprocess.run(["git", "status", "--porcelain", "--", ".", ":(exclude)bench/results"], cwd=root,
                                capture_output=True, text=True).stdout
    except OSError:
        head, status = "", ""
    dirty_paths = [line[3:] for line in status.splitlines() if line.strip()]
    info: dict[str, Any] = {"git_head": head, "git_dirty": bool(dirty_paths), "git_dirty_paths": dirty_paths}
    for package in CODE_PACKAGES:
        digest = hashlib.sha1()
        for f in sorted((root / package).glob("*.py")):
            digest.update(f.name.encode() + b"\0" + f.read_bytes())
        info[f"{package}_sha1"] = digest.hexdigest()
    return info


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    """p50/p95/mean in milliseconds of a list of durations in seconds."""
    a = np.asarray(seconds) * 1000.0
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)), "mean_ms": float(a.mean()), "n": len(a)}


def default_out(script: str) -> Path:
    return RESULTS_DIR / f"{Path(script).stem}.json"


def check_out(path: Path) -> Path:
    """Result files live under bench/results/."""
    path = path.resolve()
    if RESULTS_DIR.resolve() not in path.parents:
        raise SystemExit(f"--out must be under {RESULTS_DIR}, got {path}")
    return path


def results_out(parser: argparse.ArgumentParser, args: argparse.Namespace, default: Path, limit: str = "limit") -> Path:
    """The checked result path of a bench with a `limit` option (--limit, or e.g. "limit_docs") whose --out defaults
    to None: --out when given, else `default`, or beside it (`name_limit20.json`) when the run is cut to another limit
    than the bench's default, so a trial run never overwrites the committed figures of the full one. A file named
    with --out is always the one written."""
    out = args.out
    value = getattr(args, limit)
    if out is None:
        out = default.with_name(f"{default.stem}_limit{value}{default.suffix}") if value != parser.get_default(limit) else default
    return check_out(out)


def bench_command() -> str:
    """This bench's command line as it can be pasted back (the scripts are run with python, not executable)."""
    return "python " + shlex.join(sys.argv)


def write_result(path: Path, results: dict[str, Any], info: dict[str, Any]) -> None:
    """Write one JSON result file with the command line, machine info and a timestamp."""
    payload = {
        "command": bench_command(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {**info, "loadavg_at_end": os.getloadavg(), "process_wall_seconds": time.perf_counter() - _WALL0,
                    "process_cpu_seconds": time.process_time() - _CPU0},
        **results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    log(f"wrote {path}")


def run_stamp(info: dict[str, Any]) -> dict[str, Any]:
    """The bench command, time and machine of one run kept in a result file that later invocations add runs to
    (a file-level stamp would be overwritten by the last of them)."""
    return {"bench_command": bench_command(), "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": info}


def run_rag_eval(command: list[str], settings: dict[str, str], program: str = "rag-eval") -> tuple[dict[str, Any], str, float]:
    """Run one `rag-eval ...` command (or another `program` that prints a JSON line last) in this environment with
    `settings` set: its JSON summary, the command as a person would type it (the settings first, e.g.
    OMP_NUM_THREADS=1: latencies depend on them), seconds. A failed run stops the benchmark with its error."""
    started = time.time()
    done = subprocess.run(command, env=dict(os.environ, **settings), capture_output=True, text=True)
    if done.returncode != 0:
        log("failed", done.stderr[-2000:])
        raise SystemExit(done.returncode)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return summary, shlex.join([*(f"{k}={v}" for k, v in sorted(settings.items())), program, *command[1:]]), round(time.time() - started, 1)


def interleaved_seconds(configs: dict[str, Callable[[list[str]], Any]], texts: Sequence[str], size: int) -> dict[str, list[float]]:
    """Seconds each configuration takes on each slice of `size` texts. Every configuration runs every slice in
    turn, the order rotating from slice to slice, so load changes on a shared machine hit all of them alike."""
    names = list(configs)
    per_slice: dict[str, list[float]] = {name: [] for name in names}
    for i, start in enumerate(range(0, len(texts), size)):
        part = list(texts[start : start + size])
        for name in names[i % len(names):] + names[: i % len(names)]:
            t0 = time.perf_counter()
            configs[name](part)
            per_slice[name].append(time.perf_counter() - t0)
        log(f"slice {i}: " + ", ".join(f"{name} {sum(s):.1f}s" for name, s in per_slice.items()))
    return per_slice
