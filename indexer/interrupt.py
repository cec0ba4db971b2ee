"""SIGTERM handled as Ctrl-C, so that `kill` and `timeout` stop a command as cleanly as Ctrl-C does."""
from __future__ import annotations

import signal
from types import FrameType


def interrupt_on_sigterm() -> None:
    """From now on SIGTERM raises KeyboardInterrupt in the main thread: the clean-up written for Ctrl-C runs (a
    build's staging folder is removed, a change rolls back) instead of the process dying mid-write."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
