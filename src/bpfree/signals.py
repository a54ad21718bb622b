"""SIGTERM treated like Ctrl-C, so that cleanup code (``finally``, ``except BaseException``)
runs when a process is terminated: a run leaves a consistent directory, a download no partial
file."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

_terminated = False  # a SIGTERM arrived inside the outermost sigterm_as_interrupt block
_depth = 0  # nesting of sigterm_as_interrupt blocks


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt (main thread only).

    It is also remembered until the outermost block ends, for :func:`raise_if_terminated`: an
    exception raised while Python runs a finalizer or a weakref callback is printed
    ("Exception ignored in ...") and dropped, and the process would go on as if never told.
    """
    global _depth, _terminated
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        global _terminated
        _terminated = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    _depth += 1
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _depth -= 1
        if _depth == 0:
            _terminated = False


def raise_if_terminated() -> None:
    """Raise KeyboardInterrupt if a SIGTERM arrived in the enclosing block, even one whose own
    KeyboardInterrupt was dropped; cheap enough to call before every training step."""
    if _terminated:
        raise KeyboardInterrupt


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
