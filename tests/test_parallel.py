"""Layer-parallel and data-parallel training (engine/pipeline.py, engine/parallel.py).

The in-process tests run a rule's pipeline stages one after another in one process, for every
rule and variant of the registry that declares a pipeline; the others start real processes
(gloo on 127.0.0.1) through the public API and the command line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from bpfree import report
from bpfree.config import TrainConfig
from bpfree.engine import Trainer, build_rule, load_data, train
from bpfree.engine.pipeline import split_units, unit_tensors
from bpfree.errors import ConfigError
from bpfree.rules import RULES, Batch
from test_conformance import VARIANTS, small_native

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"dataset": "digits", "model": "mlp_4x64", "epochs": 2, "meters": False}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch):
    """One torch thread here and in every worker: a matmul's float sums depend on the thread
    count, so bit-for-bit comparisons need the same count on both sides."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pipelined_settings() -> list[tuple[str, dict[str, object]]]:
    """Every rule and variant whose rule declares a pipeline and whose settings allow one."""
    out = []
    for name in RULES.names():
        if RULES.get(name).info.pipeline == "none":
            continue
        for variant in [{}, *VARIANTS.get(name, [])]:
            out.append((name, dict(variant)))
    return out


def _built(name: str, variant: dict[str, object]):
    hp = {k: v for k, v in variant.items() if k != "__model__"}
    model = str(variant.get("__model__", small_native(name)))
    cfg = TrainConfig.build({"rule": name, "dataset": "digits", "model": model, "hparams": hp})
    data = load_data(cfg)
    return build_rule(cfg, data), build_rule(cfg, data), data


@pytest.mark.parametrize(("name", "variant"), _pipelined_settings(), ids=str)
def test_stages_compute_what_one_process_computes(name: str, variant: dict[str, object]) -> None:
    """Each declared pipeline, run stage after stage in one process, leaves every tensor of
    the rule equal to what train_step leaves (local rules: bit for bit), and its units cover
    every tensor of the rule."""
    one, staged, data = _built(name, variant)
    try:
        units = staged.pipeline_units()
    except ConfigError as exc:  # these settings are not pipelined: the reason is given
        assert staged.info.pipeline_note.split(" ")[0] in str(exc) or "pipelin" in str(exc)
        return
    covered = {id(t) for u in units for t in unit_tensors(u)}
    every = [*staged.modules.parameters(), *staged.modules.buffers()]
    assert all(id(t) in covered for t in every)
    spans = split_units([sum(t.numel() for t in unit_tensors(u)) for u in units], 2)
    idx = torch.arange(64)
    batch = Batch(data.train_x[idx], data.train_y[idx], idx)
    if staged.info.pipeline == "local":
        gen = staged.generator
        assert gen is not None
        for _ in range(3):
            want = one.train_step(batch)
            h, total = staged.pipeline_input(batch), torch.zeros(())
            start = gen.get_state()  # each process has its own generator: every stage's
            for span in spans:  # draws start from the same state
                gen.set_state(start)
                h, loss = staged.pipeline_step(span.start, span.stop, h, batch)
                total = total + loss
            assert torch.allclose(total, want, atol=1e-6)
        want_state, got_state = one.modules.state_dict(), staged.modules.state_dict()
        assert all(torch.equal(want_state[k], got_state[k]) for k in want_state)
    elif staged.info.pipeline == "feedback":  # the error of the last stage, applied at once
        for _ in range(3):
            want = one.train_step(batch)
            h, saved = staged.pipeline_input(batch), []
            for span in spans:
                h, acts = staged.pipeline_forward_span(span.start, span.stop, h)
                saved.append(acts)
            e, loss = staged.pipeline_top(spans[-1].start, saved[-1], batch)
            staged.pipeline_update(spans[-1].start, saved[-1], e, top=True)
            for span, acts in zip(spans[:-1], saved[:-1], strict=True):
                staged.pipeline_update(span.start, acts, e)
            assert torch.equal(loss, want)
        want_state, got_state = one.modules.state_dict(), staged.modules.state_dict()
        assert all(torch.equal(want_state[k], got_state[k]) for k in want_state)
        assert staged.pipeline_lag(0, 3) == (2 if variant.get("pipeline_error") == "stale" else 0)
        assert staged.pipeline_lag(2, 3) == 0  # the last stage has its error at once
    else:  # backprop: the units' forwards, composed, are the rule's prediction
        h = batch.x
        for unit in range(len(units)):
            h = staged.pipeline_forward(unit, h)
        assert torch.allclose(h, staged.predict(batch.x), atol=1e-6)


def test_split_units_balances_contiguous_stages() -> None:
    assert split_units([1568, 4000, 4000, 4000], 2) == [range(0, 2), range(2, 4)]
    assert split_units([5, 1, 1, 1, 1, 1], 2) == [range(0, 1), range(1, 6)]
    assert split_units([1, 1, 1], 3) == [range(0, 1), range(1, 2), range(2, 3)]
    with pytest.raises(ConfigError, match="cannot split 2"):
        split_units([1, 1], 3)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)


@pytest.mark.parametrize("rule", ["mf", "ff", "predsim", "fg_local"])
def test_pipelined_local_rule_ends_with_identical_parameters(rule: str, tmp_path: Path) -> None:
    """Two stages in two processes compute what one process computes: same parameters, bit
    for bit, same metrics, after two epochs (the acceptance test of the issue)."""
    one = train(rule=rule, **SMALL, out=tmp_path / "one", progress=False)
    two = train(rule=rule, **SMALL, stages=2, out=tmp_path / "two", progress=False)
    assert two.status == one.status == "completed"
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert two.to_dict()["metrics"] == one.to_dict()["metrics"]
    record = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[-1]
    assert '"parallel": "pipeline"' in record and '"bytes_sent"' in record


def _schedule(run_dir: Path) -> str:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["schedule"]


# the schedule each batch size ran: digits' training set gives batches of 128 and a last of 70
# (70: at most 2 equal micro-batches up to 4, too few for 1F1B over 3 stages: GPipe, stated)
SCHEDULES = [
    ({"stages": 2}, "batch 70: GPipe, 2 micro-batches; batch 128: GPipe, 4 micro-batches"),
    (
        {"stages": 2, "pipeline_schedule": "1f1b"},
        "batch 70: 1F1B, 2 micro-batches; batch 128: 1F1B, 4 micro-batches",
    ),
    (
        {"stages": 3, "pipeline_schedule": "1f1b"},
        "batch 70: GPipe, 2 micro-batches; batch 128: 1F1B, 4 micro-batches",
    ),
    ({"replicas": 2}, "data parallel: gradients averaged over the replicas before every step"),
]


@pytest.mark.parametrize(("how", "schedule"), SCHEDULES, ids=str)
def test_parallel_backprop_trains_as_one_process(
    how: dict[str, Any], schedule: str, tmp_path: Path
) -> None:
    """Pipelined (GPipe or 1F1B, micro-batch gradients averaged) and data-parallel (gradients
    averaged over the shards) backprop take the single-process steps up to float rounding, and
    the record states the schedule that ran."""
    one = train(rule="bp", **SMALL, out=tmp_path / "one", progress=False)
    par = train(rule="bp", **SMALL, **how, out=tmp_path / "par", progress=False)
    assert par.status == "completed"
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "par")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert abs(par.to_dict()["metrics"]["val_loss"] - one.to_dict()["metrics"]["val_loss"]) < 1e-4
    assert _schedule(tmp_path / "par") == schedule


def test_pipelined_dfa_waits_for_the_error_or_runs_stale(tmp_path: Path) -> None:
    """Update-locked DFA over two processes: waiting for each batch's error computes what one
    process computes, bit for bit; the stale schedule (stage 0 applies batch i's error after it
    has forwarded batch i+1) is a different algorithm, still trains, applies every batch's
    update within the epoch, and its record says how late."""
    settings = {**SMALL, "epochs": 3, "hparams": {"lr": 1e-2}}
    one = train(rule="dfa", **settings, out=tmp_path / "one", progress=False)
    wait = train(rule="dfa", **settings, stages=2, out=tmp_path / "wait", progress=False)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "wait")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert wait.to_dict()["metrics"] == one.to_dict()["metrics"]
    assert "lags [0, 0]" in _schedule(tmp_path / "wait")
    stale_hp = {"lr": 1e-2, "pipeline_error": "stale"}
    stale = train(
        rule="dfa",
        **{**settings, "hparams": stale_hp},
        stages=2,
        out=tmp_path / "stale",
        progress=False,
    )
    c = _weights(tmp_path / "stale")
    assert not all(torch.equal(a[k], c[k]) for k in a)  # not the single-process algorithm
    metrics = stale.to_dict()["metrics"]
    assert metrics["optimizer_steps"] == one.to_dict()["metrics"]["optimizer_steps"]
    assert metrics["val_accuracy"] > 0.4 and one.to_dict()["metrics"]["val_accuracy"] > 0.4
    assert "lags [1, 0]" in _schedule(tmp_path / "stale")
    # one process: the stale setting has nothing to be late for
    train(rule="dfa", **{**settings, "hparams": stale_hp}, out=tmp_path / "alone", progress=False)
    d = _weights(tmp_path / "alone")
    assert all(torch.equal(a[k], d[k]) for k in a)


def test_data_parallel_local_rule_averages_gradients(tmp_path: Path) -> None:
    one = train(rule="mf", **SMALL, out=tmp_path / "one", progress=False)
    par = train(rule="mf", **SMALL, replicas=2, out=tmp_path / "par", progress=False)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "par")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    steps = [r.to_dict()["metrics"]["optimizer_steps"] for r in (one, par)]
    assert steps[0] == steps[1]


def test_parallel_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="cannot be split into pipeline stages"):
        TrainConfig.build({"rule": "fa", "dataset": "digits", "stages": 2})
    with pytest.raises(ConfigError, match="1f1b needs micro_batches >= stages"):
        TrainConfig.build(
            {
                "rule": "bp",
                "dataset": "digits",
                "model": "mlp_4x64",
                "stages": 4,
                "micro_batches": 2,
                "pipeline_schedule": "1f1b",
            }
        )
    with pytest.raises(ConfigError, match="not both"):
        TrainConfig.build({"rule": "mf", "dataset": "digits", "stages": 2, "replicas": 2})
    with pytest.raises(ConfigError, match="budget_seconds"):
        TrainConfig.build({"rule": "mf", "dataset": "digits", "stages": 2, "budget_seconds": 5})
    with pytest.raises(ConfigError, match="data-parallel"):
        TrainConfig.build({"rule": "mezo", "dataset": "digits", "replicas": 2})
    cfg = TrainConfig.build({"rule": "mf", "dataset": "digits", "stages": 2})
    with pytest.raises(ConfigError, match=r"bpfree\.train"):
        Trainer(cfg).run()
    assert "stages" not in TrainConfig.build({"rule": "mf", "dataset": "digits"}).to_dict()


def _cli(*args: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "bpfree", "train", *args, "--out", str(out), "--quiet"]


def test_cli_refuses_what_cannot_be_pipelined(tmp_path: Path) -> None:
    for args, message in [
        (["--rule", "mf", "--set", "schedule=sequential"], "sequential one trains one layer"),
        (["--rule", "mf", "--model", "mlp_2x32", "--stages", "3"], "fewer than 3 stages"),
    ]:
        done = subprocess.run(
            _cli(*args, "--dataset", "digits", "--stages", "2", out=tmp_path / "x")
            if "--stages" not in args
            else _cli(*args, "--dataset", "digits", out=tmp_path / "x"),
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr


def _compare(*args: str, out: Path) -> subprocess.CompletedProcess[str]:
    argv = ["compare", "--rules", "mf", "--dataset", "digits", "--model", "mf=mlp_4x64"]
    argv += ["--seeds", "2", "--epochs", "1", "--train-samples", "300", *args]
    return subprocess.run(
        [sys.executable, "-m", "bpfree", *argv, "--out", str(out), "--quiet", "--no-report"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_compare_pipelines_the_rule_and_its_twin(tmp_path: Path) -> None:
    """`compare --stages 2`: the rule and its backprop twin both run as 2-stage pipelines;
    `--one-process-reference` trains the first seed's runs in one process too, and the report
    states the speedup."""
    out = tmp_path / "cmp"
    done = _compare("--stages", "2", "--one-process-reference", out=out)
    assert done.returncode == 0, done.stderr
    assert "(one process, for the speedup), validation only: training" in done.stderr
    runs = {p.parent.name: p.read_text() for p in (out / "runs").glob("*/metrics.jsonl")}
    parallel = {k: v for k, v in runs.items() if not k.endswith("--one-process")}
    assert len(parallel) == 4 and len(runs) == 6  # 2 seeds x (mf, twin) + seed 0's references
    assert all('"parallel": "pipeline"' in text for text in parallel.values())
    for key in ("mf--mlp_4x64--s0", "bp_at_mlp_4x64--mlp_4x64--s0"):
        ref = out / "runs" / f"{key}--one-process"
        assert json.loads((ref / "config.json").read_text()).get("stages", 1) == 1
        assert '"parallel"' not in runs[ref.name]
        result = json.loads((ref / "result.json").read_text())
        assert result["metrics"].get("test_accuracy") is None  # never scored on test
    # pipelined mf computes what one process computes: the same validation accuracy
    mf = json.loads((out / "runs" / "mf--mlp_4x64--s0" / "result.json").read_text())
    ref = json.loads((out / "runs" / "mf--mlp_4x64--s0--one-process" / "result.json").read_text())
    assert mf["metrics"]["val_accuracy"] == ref["metrics"]["val_accuracy"]
    table = report(out, plots=False)  # each process's figures, the schedule, the speedup
    section = table.split("## Parallel runs", 1)[1]
    rows = {line.split(" | ")[0]: line.split(" | ") for line in section.splitlines()}
    assert rows["| mf, seed 0"][1] == "2"
    assert rows["| mf, seed 0"][2].startswith("pipeline: local: each stage updates")
    for label in ("| mf, seed 0", "| bp@mlp_4x64, seed 0"):
        rate, one, speedup = (float(c.rstrip("x")) for c in rows[label][3:6])
        assert speedup == pytest.approx(rate / one, abs=0.01) and speedup > 0
    assert rows["| mf, seed 1"][4:6] == ["n/a", "n/a"]  # references: the first seed only
    assert rows["| bp@mlp_4x64, seed 0"][2].startswith(
        "pipeline: batch 14: GPipe, 2 micro-batches; batch 128: "
    )
    assert "--one-process-reference" in section
    assert 'id="parallel"' in (out / "report" / "report.html").read_text()


def test_one_process_reference_needs_a_parallel_run(tmp_path: Path) -> None:
    done = _compare("--one-process-reference", out=tmp_path / "cmp")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--one-process-reference measures the speedup of parallel runs" in done.stderr


def _stage_processes(parent: int) -> list[int]:
    """The worker processes a `bpfree train --stages K` process started (not its helpers)."""
    pids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
            cmd = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = next(line.split()[1] for line in text.splitlines() if line.startswith("PPid:"))
        if int(ppid) == parent and "spawn_main" in cmd:
            pids.append(int(status.parent.name))
    return sorted(pids)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_killed_stage_leaves_a_run_that_resume_continues(tmp_path: Path) -> None:
    """SIGKILL one stage process after the first checkpoint: the launcher stops the other,
    says how to continue, and --resume finishes the run with the parameters an uninterrupted
    run has."""
    args = ["--rule", "mf", "--dataset", "digits", "--model", "mlp_4x256", "--epochs", "60"]
    args += ["--patience", "60", "--stages", "2"]
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cli(*args, out=out), stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists() or not (out / "checkpoint.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
        time.sleep(0.01)
    workers = _stage_processes(proc.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SIGKILL" in err and "--resume" in err and "Traceback" not in err
    done = subprocess.run(
        _cli(*args, "--resume", out=out), capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    settings = {"rule": "mf", "dataset": "digits", "model": "mlp_4x256", "epochs": 60}
    train(**settings, patience=60, out=tmp_path / "one", progress=False)
    a, b = _weights(tmp_path / "one"), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
