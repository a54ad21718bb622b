"""`bpfree compare --tune N [--storage URL]`: equal tuning budgets, and runs shared by processes.

Tiny on purpose: digits, 2x16 MLPs, 2 epochs, 2 trials per study. The PostgreSQL variant needs
``BPFREE_TEST_POSTGRES`` (see tests/test_sweep_postgres.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from bpfree.comparison import compare
from bpfree.sweeps import open_storage
from sweep_helpers import assert_exactly_n, load_trials, worker_env

optuna = pytest.importorskip("optuna", reason="sweeps need the 'sweep' extra (optuna)")
PG = os.environ.get("BPFREE_TEST_POSTGRES")
TINY: dict[str, Any] = dict(dataset="digits", epochs=2, device="cpu", progress=False)
FLAGS = ["--dataset", "digits", "--epochs", "2", "--device", "cpu", "--quiet"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # The loaded CI machine has few cores; the subprocesses get one thread each too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _study_attrs(name: str, storage: str) -> dict[str, Any]:
    return optuna.load_study(study_name=name, storage=open_storage(storage)).user_attrs


def test_rule_and_twin_get_one_budget_and_the_runs_use_the_best_settings(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    logs: list[str] = []
    kwargs = dict(
        rules="mf,dfa:optimizer=adamw",
        out=out,
        seeds=1,
        models={"mf": "mlp_2x16", "dfa": "mlp_2x16"},
        tune=2,
        log=logs.append,
        **TINY,
    )
    result = compare(**kwargs)
    manifest = json.loads((out / "compare.json").read_text())
    tuning = manifest["tuning"]
    storage = f"sqlite:///{out / 'tuning.db'}"  # --tune without --storage: inside <out>
    # stored without the machine's absolute path
    assert tuning["storage"] == "tuning.db in the comparison directory"
    assert (out / "tuning.db").exists() and tuning["trials"] == 2
    # One study per variant and one per twin (matched twins: mf's Adam and dfa's AdamW
    # differ), all under one budget.
    mf_twin, dfa_twin = "bp@mlp_2x16~mf", "bp@mlp_2x16~dfa:optimizer=adamw"
    assert list(tuning["studies"]) == ["mf", "dfa:optimizer=adamw", mf_twin, dfa_twin]
    attrs = {label: _study_attrs(s["study"], storage) for label, s in tuning["studies"].items()}
    for label, a in attrs.items():
        assert_exactly_n(tuning["studies"][label]["study"], storage, 2)
        assert a["budget"] == attrs[mf_twin]["budget"]
        assert a["sampler_pruner"] == attrs[mf_twin]["sampler_pruner"]
        assert a["budget"]["n_trials"] == 2
        base = dict(a["base_config"])
        assert (base["epochs"], base["train_samples"], base["seed"]) == (2, None, 0)
        twin = dict(attrs[mf_twin]["base_config"])
        for cfg in (base, twin):
            del cfg["rule"], cfg["hparams"]
        assert base == twin  # every protocol setting of the tuning trials is the same
    assert attrs["dfa:optimizer=adamw"]["base_config"]["hparams"]["optimizer"] == "adamw"
    # A tuned twin keeps its rule's untuned optimizer settings; what backprop's search tunes
    # (lr, weight decay, batch size) starts from backprop's own defaults.
    twin_base = attrs[dfa_twin]["base_config"]["hparams"]
    assert twin_base["optimizer"] == "adamw" and twin_base["lr"] == 1e-3
    # Trial 0 of every study trains what the untuned comparison would: the rule's defaults,
    # the twin its matched settings (DFA's lr 1e-4), so tuning cannot end below them.
    for label, s in tuning["studies"].items():
        trial0 = min(load_trials(s["study"], storage), key=lambda t: t.number)
        assert trial0.params == attrs[label]["first_trial"], label
    assert attrs[dfa_twin]["first_trial"]["lr"] == pytest.approx(1e-4)
    assert attrs[mf_twin]["first_trial"]["lr"] == pytest.approx(1e-3)
    # The seeded runs train with each study's best settings (the fixed one kept).
    for run in result.plan:
        best = tuning["studies"][run.label]
        study = optuna.load_study(study_name=best["study"], storage=open_storage(storage))
        assert run.config.hparams == study.best_trial.user_attrs["hparams"] == best["hparams"]
        stored = json.loads((out / "runs" / run.key / "config.json").read_text())
        assert stored["hparams"] == best["hparams"]
    by_label = {r.label: r for r in result.plan}
    assert by_label["dfa:optimizer=adamw"].config.hparams["optimizer"] == "adamw"
    assert by_label[dfa_twin].config.hparams["optimizer"] == "adamw"
    assert "tuned: 2 trials each, same budget" in (out / "report" / "table.md").read_text()
    assert "trial 0 at each one's untuned settings" in (out / "report" / "table.md").read_text()
    assert "tuned: 2 trials each, same budget" in (out / "report" / "report.html").read_text()

    # Rerun: the studies are finished and the runs done; nothing is tuned or trained again.
    stamp = (out / "runs" / result.plan[0].key / "result.json").stat().st_mtime_ns
    logs.clear()
    compare(**{**kwargs, "report": False})
    assert not [line for line in logs if line.startswith("  tuning ")]
    assert all("reused" in line for line in logs if line.startswith("["))
    assert (out / "runs" / result.plan[0].key / "result.json").stat().st_mtime_ns == stamp
    for label, s in tuning["studies"].items():
        assert len(load_trials(s["study"], storage)) == 2, label


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=log.open("wb"), env=worker_env(), cwd=log.parent
    )


def _two_processes_share_one_comparison(tmp_path: Path, storage: str) -> None:
    """Two `bpfree compare` processes, each with its own <out> (as on two machines)."""
    subset = str(1000 + uuid.uuid4().int % 200)  # a fresh comparison (PostgreSQL persists)
    procs, logs = [], []
    for name in ("a", "b"):
        cmd = [
            sys.executable, "-m", "bpfree", "compare", "--rules", "mf", "--seeds", "2",
            "--model", "mf=mlp_2x16", "--tune", "2", "--tune-train-samples", subset,
            "--storage", storage,
            "--out", str(tmp_path / name), *FLAGS,
        ]  # fmt: skip
        logs.append(tmp_path / f"{name}.log")
        procs.append(_start(cmd, logs[-1]))
    stdout = []
    for proc, log in zip(procs, logs, strict=True):
        try:
            text, _ = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"compare timed out; its log:\n{log.read_text()}")
        assert proc.returncode == 0, log.read_text()
        stdout.append(text.decode())
    # Both print, and write, the same final table (from the shared results).
    assert stdout[0].split("report:")[0] == stdout[1].split("report:")[0]
    assert "tuned: 2 trials each, same budget" in stdout[0]
    tables = [(tmp_path / n / "report" / "table.md").read_text() for n in ("a", "b")]
    assert tables[0] == tables[1]
    manifest = json.loads((tmp_path / "a" / "compare.json").read_text())
    assert str(tmp_path) not in json.dumps(manifest)  # the storage by its file's name alone
    for s in manifest["tuning"]["studies"].values():
        assert_exactly_n(s["study"], storage, 2)  # each study: its budget, nothing twice
    # Every seeded run trained exactly once, by one of the two processes.
    runs = load_trials(manifest["shared"]["runs_study"], storage)
    keys = [r["key"] for r in manifest["runs"]]
    assert sorted(t.user_attrs["key"] for t in runs) == sorted(keys)  # 4 tickets, none re-run
    assert all(t.state.name == "COMPLETE" for t in runs)
    owners = {f"{socket.gethostname()}:{p.pid}" for p in procs}
    assert {t.user_attrs["worker"] for t in runs} <= owners
    trained = [set(re.findall(r": training \(ticket (\d+)\)", log.read_text())) for log in logs]
    assert not trained[0] & trained[1]
    assert trained[0] | trained[1] == {str(t.number) for t in runs}
    for key in keys:  # each <out> holds every run, whoever trained it
        a, b = (json.loads((tmp_path / n / "runs" / key / "result.json").read_text()) for n in "ab")
        assert a == b and a["status"] == "completed"
        assert (tmp_path / "b" / "runs" / key / "metrics.jsonl").read_text().count("\n") == 2
    assert "report.html" in stdout[1]
    if storage.startswith("postgres"):
        names = [s["study"] for s in manifest["tuning"]["studies"].values()]
        for name in [*names, manifest["shared"]["runs_study"]]:
            optuna.delete_study(study_name=name, storage=open_storage(storage))


def test_two_processes_share_one_comparison_sqlite(tmp_path: Path) -> None:
    _two_processes_share_one_comparison(tmp_path, f"sqlite:///{tmp_path / 'shared.db'}")


@pytest.mark.skipif(not PG, reason="no PostgreSQL server configured (BPFREE_TEST_POSTGRES)")
def test_two_processes_share_one_comparison_postgres(tmp_path: Path) -> None:
    pytest.importorskip("psycopg2", reason="PostgreSQL storage needs psycopg2-binary")
    assert PG is not None
    _two_processes_share_one_comparison(tmp_path, PG)


def test_a_killed_process_run_is_rerun_by_another(tmp_path: Path) -> None:
    """SIGKILL mid-run: after the grace period another process fails the ticket, queues the
    run again and trains it from scratch in its own <out>."""
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    settings = dict(
        rules="mf",
        seeds=1,
        models={"mf": "mlp_2x256"},
        sets=["patience=12"],
        storage=storage,
        budget={"heartbeat_interval_s": 1, "grace_period_s": 3},
        report=False,
        **{**TINY, "epochs": 12},
    )
    victim_out = tmp_path / "victim"
    code = (
        "import json, sys; from bpfree.comparison import compare; "
        f"compare(**json.loads(sys.argv[1]), out={str(victim_out)!r})"
    )
    log = tmp_path / "victim.log"
    victim = _start([sys.executable, "-c", code, json.dumps(settings)], log)
    victim_id = f"{socket.gethostname()}:{victim.pid}"
    killed = None
    deadline = time.monotonic() + 120
    while killed is None:
        assert time.monotonic() < deadline and victim.poll() is None, log.read_text()
        for t in _runs_trials(tmp_path / "victim", storage):
            checkpoint = victim_out / "runs" / t.user_attrs["key"] / "checkpoint.pt"
            if t.user_attrs.get("worker") == victim_id and checkpoint.exists():
                victim.send_signal(signal.SIGKILL)
                killed = t
        time.sleep(0.05)
    victim.wait(timeout=10)
    logs: list[str] = []
    result = compare(**settings, out=tmp_path / "rescuer", log=logs.append)
    trials = _runs_trials(tmp_path / "victim", storage)
    dead = trials[killed.number]
    assert dead.state.name == "FAIL"
    retry = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    assert retry[0].user_attrs["key"] == killed.user_attrs["key"]
    assert retry[0].user_attrs["worker"] != victim_id
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs["key"] for t in done) == sorted(r.key for r in result.plan)
    # Restarted from scratch (the checkpoint stayed with the victim): every epoch, once.
    metrics = tmp_path / "rescuer" / "runs" / killed.user_attrs["key"] / "metrics.jsonl"
    assert [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()] == list(range(1, 13))
    assert any(": training (ticket" in line for line in logs)


def _runs_trials(out: Path, storage: str) -> list[Any]:
    manifest = out / "compare.json"
    if not manifest.exists():
        return []
    try:
        return load_trials(json.loads(manifest.read_text())["shared"]["runs_study"], storage)
    except KeyError:  # the victim has not created the study yet
        return []


def test_only_with_a_shared_storage_takes_only_those_rows_tickets(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    settings: dict[str, Any] = dict(
        rules="mf", seeds=2, models={"mf": "mlp_2x16"}, storage=storage, report=False, **TINY
    )
    part = compare(**settings, out=tmp_path / "a", only="bp@mlp_2x16")
    assert sorted(part.results) == ["bp_at_mlp_2x16--mlp_2x16--s0", "bp_at_mlp_2x16--mlp_2x16--s1"]
    study = json.loads((tmp_path / "a" / "compare.json").read_text())["shared"]["runs_study"]
    trained = [
        t.user_attrs["key"] for t in load_trials(study, storage) if t.state.name == "COMPLETE"
    ]
    assert sorted(trained) == sorted(part.results)  # the mf tickets wait for another process
    whole = compare(**settings, out=tmp_path / "b")  # another process, every row
    assert len(whole.results) == 4
    done = [t for t in load_trials(study, storage) if t.state.name == "COMPLETE"]
    assert len(done) == 4  # the twins were not trained again


def test_a_crashed_run_stops_the_comparison_and_a_rerun_queues_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bpfree.comparison.runner as runner_mod

    real = runner_mod.run_config

    def crashing(config: Any, *args: Any, **kwargs: Any) -> Any:
        if config.rule == "mf":
            raise RuntimeError("out of memory")
        return real(config, *args, **kwargs)

    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    settings: dict[str, Any] = dict(
        rules="mf", seeds=1, models={"mf": "mlp_2x16"}, storage=storage, report=False, **TINY
    )
    monkeypatch.setattr(runner_mod, "run_config", crashing)
    with pytest.raises(RuntimeError, match="out of memory"):
        compare(**settings, out=tmp_path / "a")
    study = json.loads((tmp_path / "a" / "compare.json").read_text())["shared"]["runs_study"]
    [crashed] = [t for t in load_trials(study, storage) if t.state.name == "FAIL"]
    assert crashed.user_attrs["error"] and "out of memory" in crashed.user_attrs["reason"]
    # A process already at work stops with that reason; a rerun (after the fix) queues the run
    # again, here in another <out> as on another machine, and the comparison completes.
    monkeypatch.setattr(runner_mod, "run_config", real)
    result = compare(**settings, out=tmp_path / "b")
    assert all(r.status == "completed" for r in result.results.values())
    [again] = [t for t in load_trials(study, storage) if t.user_attrs.get("repaired")]
    assert again.state.name == "COMPLETE" and again.user_attrs["key"] == crashed.user_attrs["key"]
    states = sorted(t.state.name for t in load_trials(study, storage))
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]
