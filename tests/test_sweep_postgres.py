"""Sweeps against a real PostgreSQL server: several workers, and a worker killed mid-trial.

Needs ``BPFREE_TEST_POSTGRES=postgresql://USER:PASSWORD@HOST:PORT/DB``; ``.ci/run`` starts a
local server and sets it (``scripts/postgres-test-server.sh``).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from bpfree.config import TrainConfig
from bpfree.sweeps import Budget, create_or_join, open_storage
from sweep_helpers import (
    TINY,
    assert_exactly_n,
    load_trials,
    start_worker,
    study_name,
    wait_all,
)

optuna = pytest.importorskip("optuna", reason="sweeps need the 'sweep' extra (optuna)")
URL = os.environ.get("BPFREE_TEST_POSTGRES")
pytestmark = pytest.mark.skipif(
    not URL,
    reason="no PostgreSQL server configured: set BPFREE_TEST_POSTGRES=postgresql://... "
    "(e.g. export BPFREE_TEST_POSTGRES=$(bash scripts/postgres-test-server.sh), as .ci/run does)",
)


@pytest.fixture
def pg() -> str:
    pytest.importorskip("psycopg2", reason="PostgreSQL storage needs psycopg2-binary")
    assert URL is not None
    return URL


def test_three_workers_finish_the_study_exactly_once(pg: str, tmp_path: Path) -> None:
    name = study_name("pg3")
    create_or_join(name, pg, base=TINY, budget={"n_trials": 9})
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    procs = [start_worker(name, pg, log) for log in logs]
    wait_all(procs, logs, timeout=150)
    trials = assert_exactly_n(name, pg, 9)
    assert len(trials) == 9  # nothing ran twice, nothing was added
    study = optuna.load_study(study_name=name, storage=open_storage(pg))
    assert study.user_attrs["cost"]["trial_wall_time_s"] == pytest.approx(
        sum(t.user_attrs["cost"]["trial_wall_time_s"] for t in trials)
    )
    optuna.delete_study(study_name=name, storage=open_storage(pg))


def test_worker_killed_mid_trial_is_failed_retried_and_the_study_completes(
    pg: str, tmp_path: Path
) -> None:
    name = study_name("pgkill")
    # Slower trials (a 2x1000 MLP for 8 epochs, ~0.3 s each) so one can be caught running;
    # heartbeats every second, a silent trial is failed after 3.
    base = TrainConfig.build({**TINY, "model": "mlp_2x1000", "epochs": 8, "patience": 8})
    budget = Budget(n_trials=3, heartbeat_interval_s=1, grace_period_s=3, pruner="none")
    create_or_join(name, pg, base=base, budget=budget)
    victim_log = tmp_path / "victim.log"
    victim = start_worker(name, pg, victim_log)
    victim_id = f"{socket.gethostname()}:{victim.pid}"
    killed = None
    deadline = time.monotonic() + 90
    while killed is None and time.monotonic() < deadline:
        for t in load_trials(name, pg):
            # Running, owned by the victim, with at least one epoch's cost recorded.
            mine = t.state.name == "RUNNING" and t.user_attrs.get("worker") == victim_id
            if mine and "cost" in t.user_attrs:
                victim.send_signal(signal.SIGKILL)
                killed = t
        if victim.poll() is not None and killed is None:
            pytest.fail(f"the victim finished before it could be killed:\n{victim_log.read_text()}")
        time.sleep(0.05)
    assert killed is not None, victim_log.read_text()
    victim.wait(timeout=10)
    assert load_trials(name, pg)[killed.number].state.name == "RUNNING"  # nobody noticed yet

    logs = [tmp_path / "rescuer.log"]
    wait_all([start_worker(name, pg, logs[0])], logs, timeout=150)
    trials = assert_exactly_n(name, pg, 3)
    dead = trials[killed.number]
    assert dead.state.name == "FAIL"
    assert dead.user_attrs["cost"]["partial"] is True  # its finished epochs still count
    retry = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    assert retry[0].params == killed.params  # the same settings, re-run
    assert retry[0].user_attrs["slot"] == killed.user_attrs["slot"]
    cost = optuna.load_study(study_name=name, storage=open_storage(pg)).user_attrs["cost"]
    assert cost["by_state"]["FAIL"]["trials"] == 1
    optuna.delete_study(study_name=name, storage=open_storage(pg))
