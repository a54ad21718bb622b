"""Every run's result.json carries every cost name, measured or null with the reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bpfree.cli import main
from bpfree.engine.result import RunResult
from bpfree.meters.peak import matmul_peak
from bpfree.meters.suite import REQUIRED


@pytest.fixture(autouse=True)
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_train_result_has_every_cost_name(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # A fresh process: in this one, earlier tests' freed memory would be reused by training
    # without raising the resident set, and the (correct) reading would be 0 B.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bpfree",
            "train",
            "--rule",
            "bp",
            "--model",
            "mlp_1x64",
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            str(out),
            "--country",
            "FR",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    cost = json.loads((out / "result.json").read_text())["cost"]
    for name in REQUIRED:
        assert name in cost, name
        r = cost[name]
        assert set(r) == {"value", "unit", "source", "note"}
        assert r["value"] is not None or r["source"].startswith("unavailable:"), name
    measured = (
        "train_wall_time",
        "train_cpu_time",
        "selection_wall_time",
        "test_wall_time",
        "selection_flops",
        "test_flops",
        "peak_rss_delta",
        "peak_tensor_memory",
        "state_memory",
        "activation_memory",
        "train_flops",
        "train_flops_per_s",
    )
    for name in measured:
        assert cost[name]["value"] is not None and cost[name]["value"] > 0, name
    assert cost["gpu_energy"]["source"].startswith("unavailable:")  # no GPU in the tests
    if cost["cpu_energy"]["value"] is None:  # no RAPL here: carbon says why, and is not 0
        assert cost["carbon"] == {
            "value": None,
            "unit": "g",
            "source": "unavailable:no_energy_measured",
            "note": cost["carbon"]["note"],
        }
        assert "table:FRA" in cost["carbon"]["note"]
    text = proc.stdout
    assert "train FLOPs" in text and "n/a" in text  # unavailable values print n/a, never 0


def test_peak_tensor_memory_covers_the_rule_state() -> None:
    import bpfree

    result = bpfree.train(
        rule="bp", model="mlp_1x64", dataset="digits", epochs=1, device="cpu", progress=False
    )
    params = result.metrics["num_parameters"]
    # parameters, gradients and AdamW's two moments are all live during the step
    assert result.cost["peak_tensor_memory"]["value"] >= 4 * 4 * params


def test_summary_prints_na_for_missing() -> None:
    r = RunResult(
        "completed",
        "bp",
        "m",
        "d",
        0,
        {},
        {"gpu_energy": {"value": None, "unit": "J", "source": "unavailable:no_gpu", "note": ""}},
        {},
    )
    text = r.summary()
    assert "GPU n/a" in text and "train FLOPs n/a" in text and " 0 J" not in text


def test_matmul_peak_is_cached(cache: Path) -> None:
    cpu = torch.device("cpu")
    first = matmul_peak(cpu)
    assert first is not None and not first["cached"] and first["flops_per_s"] > 0
    again = matmul_peak(cpu)
    assert again["cached"] and again["flops_per_s"] == first["flops_per_s"]
    assert (cache / "bpfree" / "matmul_peak.json").exists()


def test_env_command(capsys: pytest.CaptureFixture) -> None:
    assert main(["env", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    for word in (
        "torch",
        "Matmul peak",
        "cpu_energy",
        "gpu_energy",
        "peak_rss_delta",
        "train_flops",
        "carbon",
    ):
        assert word in text
    assert "unavailable:no_gpu" in text
