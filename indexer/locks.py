"""An advisory lock on a file, taken without waiting: one process at a time writes an index folder or a run's --out."""
from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def file_lock(path: Path) -> Iterator[bool]:
    """`path` (created if missing) locked for the block when no other process holds it: yields True, else False at
    once. A lock, not the file: one left by a process killed outright holds nothing."""
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
