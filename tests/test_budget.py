"""The budget in one unit (data passes in total, split over phases) and the compute ceilings."""

from __future__ import annotations

import pytest

from bpfree.cli import main
from bpfree.config import TrainConfig
from bpfree.engine import Trainer
from bpfree.engine.budget import allot_epochs
from bpfree.errors import ConfigError
from bpfree.rules import Phase
from bpfree.testing.conformance import tiny_data

TINY = {"dataset": "digits", "train_samples": 300, "device": "cpu", "model": "mlp_2x32"}


def _caps(phases: list[Phase], total: int) -> list[int | None]:
    return [p.max_epochs for p in allot_epochs(phases, total, "r")]


def test_the_total_is_split_over_the_phases() -> None:
    assert _caps([Phase("train")], 30) == [30]
    assert _caps([Phase(f"layer{i}", i) for i in range(3)], 30) == [10, 10, 10]
    assert _caps([Phase(f"layer{i}", i) for i in range(4)], 30) == [8, 8, 7, 7]
    # a fixed phase takes its share first (CaFo-DFA's 15 pretraining passes count)
    assert _caps([Phase("dfa_pretrain", 0, 15), Phase("predictors", 1)], 30) == [15, 15]
    assert _caps([Phase("predictors", 0, 1)], 30) == [1]  # a closed-form solve uses fewer


def test_a_split_that_leaves_a_phase_nothing_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"needs at least 16 data passes.*--epochs 15"):
        allot_epochs([Phase("dfa_pretrain", 0, 15), Phase("predictors", 1)], 15, "cafo")
    with pytest.raises(ConfigError, match="needs at least 3"):
        allot_epochs([Phase(f"layer{i}", i) for i in range(3)], 2, "mf")


def test_a_sequential_rule_trains_the_same_total_as_a_simultaneous_one() -> None:
    data = tiny_data("digits", 300)
    for schedule in ("simultaneous", "sequential"):
        config = TrainConfig.build(
            {**TINY, "rule": "mf", "epochs": 4, "patience": 9, "hparams": {"schedule": schedule}}
        )
        result = Trainer(config, None, progress=False, data=data).run()
        assert result.metrics["data_passes"] == 4 and result.metrics["epochs_trained"] == 4
        assert result.metrics["stopped_by"] == "epochs"


def _run(rule: str, **settings: object) -> dict:
    config = TrainConfig.build({**TINY, "rule": rule, "epochs": 20, "patience": 50, **settings})
    result = Trainer(config, None, progress=False, data=tiny_data("digits", 300)).run()
    return {"metrics": result.metrics, "cost": result.cost}


@pytest.mark.parametrize("rule", ["bp", "mf", "ff"])
def test_a_flops_ceiling_stops_every_rule_at_the_same_compute(rule: str) -> None:
    full = _run(rule, hparams={"batch_size": 32}, epochs=2)  # FLOPs of 2 whole passes
    ceiling = 1.5 * full["cost"]["train_flops"]["value"] / 2  # one and a half passes
    cut = _run(rule, hparams={"batch_size": 32}, budget_flops=ceiling)
    spent = cut["cost"]["train_flops"]["value"]
    step = full["cost"]["train_flops"]["value"] / full["metrics"]["optimizer_steps"]
    assert ceiling - 1.5 * step <= spent <= ceiling
    assert cut["metrics"]["stopped_by"] == "budget_flops"
    assert 1.3 < cut["metrics"]["data_passes"] < 1.6  # stopped inside the second pass


def test_a_seconds_ceiling_stops_the_run() -> None:
    out = _run("bp", hparams={"batch_size": 8}, epochs=500, budget_seconds=0.3)
    assert out["metrics"]["stopped_by"] == "budget_seconds"
    assert out["metrics"]["data_passes"] < 500
    assert out["cost"]["train_wall_time"]["value"] < 0.3 + 0.2  # one step may overrun
    assert out["metrics"]["test_accuracy"] is not None  # a completed run, tested once


def test_ceilings_from_the_command_line(tmp_path, capsys) -> None:
    argv = ["train", "--rule", "bp", "--model", "mlp_2x8", "--dataset", "digits", "--quiet"]
    code = main([*argv, "--epochs", "50", "--budget-seconds", "0.2", "--out", str(tmp_path / "r")])
    assert code == 0
    assert "stopped by budget_seconds" in capsys.readouterr().out
    assert main([*argv, "--budget-flops", "-1", "--out", str(tmp_path / "s")]) == 2
    assert "budget_flops must be a positive number" in capsys.readouterr().err
