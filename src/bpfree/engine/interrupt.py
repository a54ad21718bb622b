"""Interrupting a run: Ctrl-C or SIGTERM leave a consistent, resumable run directory."""

from __future__ import annotations

from bpfree.errors import BpfreeError
from bpfree.signals import sigterm_as_interrupt

__all__ = ["RunInterrupted", "sigterm_as_interrupt"]


class RunInterrupted(BpfreeError):
    """Ctrl-C or SIGTERM during a run; the run directory holds a resumable checkpoint."""

    exit_code = 130
