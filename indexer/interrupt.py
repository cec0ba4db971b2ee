"""SIGTERM handled as Ctrl-C, so that `kill` and `timeout` stop a command as cleanly as Ctrl-C does; both held back
while a committed change is published."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Iterator


def interrupt_on_sigterm() -> None:
    """From now on SIGTERM raises KeyboardInterrupt in the main thread: the clean-up written for Ctrl-C runs (a
    build's staging folder is removed, a change rolls back) instead of the process dying mid-write."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM held back for the block and delivered after it, to the handlers there were. For a change that
    is committed but not yet published: stopped between the two, it would be durable yet unseen by readers, and
    reported as not made. Python runs signal handlers in the main thread only, so elsewhere (a server's writer thread)
    there is nothing to hold."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []  # not a signal mask: the kernel hands a process's signal to any thread not masking it

    def hold(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    previous = {signum: signal.signal(signum, hold) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    for signum in dict.fromkeys(caught):
        signal.raise_signal(signum)
