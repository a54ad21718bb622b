"""SIGTERM treated like Ctrl-C, so that cleanup code (``finally``, ``except BaseException``)
runs when a process is terminated: a run leaves a consistent directory, a download no partial
file."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM wait: a file being written is finished first.

    A signal that arrives is re-raised on exit, to whatever handler was installed before, so
    Ctrl-C still interrupts and SIGTERM still terminates, just after the write (main thread
    only; elsewhere the block runs unprotected, as signals reach only the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        pending.append(signum)

    signums = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)
        if pending:
            signal.raise_signal(pending[0])
