"""Interrupting a run: Ctrl-C or SIGTERM leave a consistent, resumable run directory."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from bpfree.errors import BpfreeError


class RunInterrupted(BpfreeError):
    """Ctrl-C or SIGTERM during a run; the run directory holds a resumable checkpoint."""

    exit_code = 130


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C so a killed run still leaves a consistent run directory."""
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
