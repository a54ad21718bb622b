"""A signal that arrives while a file is being written waits for the write to finish."""

from __future__ import annotations

import json
import os
import signal
import types
from pathlib import Path

import pytest
import torch

from bpfree.engine import io
from bpfree.engine.loop import train_epoch
from bpfree.signals import deferred_interrupts, raise_if_terminated, sigterm_as_interrupt


def test_sigint_inside_the_block_is_raised_after_it() -> None:
    """Under Python's own Ctrl-C handler (a process started in the background by a
    non-interactive shell inherits SIGINT ignored, and an ignored signal stays ignored)."""
    finished = False
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            finished = True
    finally:
        signal.signal(signal.SIGINT, previous)
    assert finished


def test_an_ignored_sigint_stays_ignored() -> None:
    """The signal is re-raised to the handler installed before: SIG_IGN ignores it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigterm_mid_write_leaves_a_whole_file_then_interrupts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure CI saw: SIGTERM inside torch.save corrupted the checkpoint being written."""
    path = tmp_path / "result.json"

    def write(f: object) -> None:
        f.write('{"a": ')  # type: ignore[attr-defined]
        os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-write
        f.write("1}\n")  # type: ignore[attr-defined]

    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        io._atomic(path, write, "w")
    assert json.loads(path.read_text()) == {"a": 1}
    assert not list(tmp_path.glob(".*.tmp"))


def test_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with deferred_interrupts():
        pass
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


class _Steps:
    """A stand-in rule: counts its training steps."""

    def __init__(self) -> None:
        self.steps = 0

    def train_step(self, batch: object) -> torch.Tensor:
        self.steps += 1
        return torch.zeros(())


class _KilledWhileCollected:
    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # its KeyboardInterrupt is raised in here


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_sigterm_dropped_in_a_finalizer_still_stops_the_next_training_step() -> None:
    """What a comparison worker did: the interrupt landed in a weakref callback, Python printed
    "Exception ignored" and the worker trained on, then claimed the next run."""
    data = types.SimpleNamespace(train_x=torch.zeros(8, 2), train_y=torch.zeros(8))
    rule = _Steps()
    with sigterm_as_interrupt():
        train_epoch(rule, data, torch.Generator(), 2, torch.device("cpu"))  # type: ignore[arg-type]
        assert rule.steps == 4
        _KilledWhileCollected()  # collected at once; the interrupt is printed and dropped
        with pytest.raises(KeyboardInterrupt):
            train_epoch(rule, data, torch.Generator(), 2, torch.device("cpu"))  # type: ignore[arg-type]
        assert rule.steps == 4  # no step after the signal
        with pytest.raises(KeyboardInterrupt):
            raise_if_terminated()  # remembered until the block ends
    raise_if_terminated()  # the next block starts afresh
