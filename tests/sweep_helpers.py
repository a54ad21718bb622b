"""Shared pieces of the sweep tests: tiny budgets, worker subprocesses, study checks."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

optuna = pytest.importorskip("optuna", reason="sweeps need the 'sweep' extra (optuna)")

# Each trial trains a 1x32 MLP on digits for 2 epochs: well under a second.
TINY = {"rule": "mf", "model": "mlp_1x32", "dataset": "digits", "epochs": 2, "device": "cpu"}
TINY_FLAGS = [
    "--rule",
    "mf",
    "--model",
    "mlp_1x32",
    "--dataset",
    "digits",
    "--epochs",
    "2",
    "--device",
    "cpu",
]
FINISHED = ("COMPLETE", "PRUNED")


def study_name(prefix: str = "test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def worker_env() -> dict[str, str]:
    # One thread per process: several workers share the CPU cores without oversubscribing them.
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def start_worker(study: str, storage: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "bpfree", "worker", "--study", study, "--storage", storage, *extra]
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=worker_env())


def wait_all(procs: list[subprocess.Popen[bytes]], logs: list[Path], timeout: float) -> None:
    for proc, log in zip(procs, logs, strict=True):
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"worker timed out; its log:\n{log.read_text()}")
        assert rc == 0, f"worker exited {rc}; its log:\n{log.read_text()}"


def load_trials(study: str, storage: str) -> list[Any]:
    from bpfree.sweeps import open_storage

    return optuna.load_study(study_name=study, storage=open_storage(storage)).get_trials()


def assert_exactly_n(study: str, storage: str, n: int) -> list[Any]:
    """n finished trials, one per slot 0..n-1, nothing left running or waiting."""
    trials = load_trials(study, storage)
    finished = [t for t in trials if t.state.name in FINISHED]
    assert len(finished) == n, [(t.number, t.state.name) for t in trials]
    assert sorted(t.user_attrs["slot"] for t in finished) == list(range(n))
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    for t in finished:
        assert t.user_attrs["cost"]["trial_wall_time_s"] > 0
    return trials
