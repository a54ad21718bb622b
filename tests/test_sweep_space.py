"""Search spaces, budgets, storage URLs and the exported TOML: no study runs here."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from bpfree.config import TrainConfig, load_toml
from bpfree.errors import ConfigError
from bpfree.rules import RULES
from bpfree.sweeps import Budget, SweepSummary, best_toml, resolve_url, search_space
from bpfree.sweeps.storage import for_record, redact

optuna = pytest.importorskip("optuna", reason="sweeps need the 'sweep' extra (optuna)")


def _points(space: dict[str, Any]) -> list[dict[str, Any]]:
    """Three points of a space: both ends of every range and its middle; last/first/mid choice."""
    points = []
    for pick in (0, 1, 2):
        params = {}
        for name, d in space.items():
            if d["type"] == "categorical":
                params[name] = d["choices"][[0, -1, len(d["choices"]) // 2][pick]]
                continue
            low, high = d["low"], d["high"]
            mid = math.sqrt(low * high) if d["log"] else (low + high) / 2
            value = [low, high, mid][pick]
            params[name] = round(value) if d["type"] == "int" else value
        points.append(params)
    return points


@pytest.mark.parametrize("rule", RULES.names())
def test_search_space_round_trips_through_fixed_trial(rule: str) -> None:
    hp_cls = RULES.get(rule).Hparams
    space = search_space(rule)
    assert space, f"{rule} has an empty search space"
    assert set(space) <= set(hp_cls.field_names())
    for params in _points(space):
        hp = hp_cls.suggest(optuna.trial.FixedTrial(params))
        assert isinstance(hp, hp_cls)
        values = hp.to_dict()
        assert {k: values[k] for k in params} == params  # each name sets the field it names
        assert hp_cls.from_dict(values, rule) == hp  # and the settings rebuild the same object


def test_budget_checks_and_round_trips() -> None:
    budget = Budget(n_trials=20, sampler_seed=3)
    assert Budget.from_dict(budget.to_dict()) == budget
    assert budget.failure_cap == 20
    with pytest.raises(ConfigError, match="trials"):
        Budget.from_dict({"sampler_seed": 1})
    with pytest.raises(ConfigError, match="did you mean"):
        Budget.from_dict({"n_trials": 3, "sampler_sed": 1})
    with pytest.raises(ConfigError, match="grace_period_s"):
        Budget(n_trials=3, heartbeat_interval_s=10, grace_period_s=5)


def test_sampler_seed_is_per_trial_and_recorded() -> None:
    budget = Budget(n_trials=5, sampler_seed=7)
    study = optuna.create_study()

    def draw(number: int) -> float:
        study.sampler = budget.sampler(number)
        return study.sampler.sample_independent(
            study, None, "lr", optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
        )

    assert draw(3) == draw(3) != draw(4)  # two workers never draw the same start-up point
    assert budget.describe()["sampler"]["seed"] == 7


def test_storage_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BPFREE_STORAGE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_url(None) == f"sqlite:///{tmp_path / 'bpfree-sweeps.db'}"
    assert resolve_url("x.db") == f"sqlite:///{tmp_path / 'x.db'}"
    monkeypatch.setenv("BPFREE_STORAGE", "postgres://u:p@h:5432/d")
    assert resolve_url(None) == "postgresql://u:p@h:5432/d"
    assert redact("postgresql://u:secret@h/d") == "postgresql://u:***@h/d"
    # stored records: no password, and no machine's folder (results ship no local paths)
    assert for_record(f"sqlite:///{tmp_path / 'x.db'}") == "sqlite:///x.db"
    assert for_record("postgresql://u:secret@h/d") == "postgresql://u:***@h/d"
    with pytest.raises(ConfigError, match="unsupported sweep storage"):
        resolve_url("redis://h")


def test_exported_toml_loads_as_a_train_config(tmp_path: Path) -> None:
    base = TrainConfig.build(
        {"rule": "bp", "model": "mlp_1x32", "dataset": "digits", "epochs": 3, "train_samples": 500}
    )
    hparams = {**base.hparams, "lr": 0.0031, "batch_size": 64}
    summary = SweepSummary(
        study="s",
        storage="sqlite:///x",
        status="complete",
        finished=4,
        n_trials=4,
        counts={"COMPLETE": 4},
        base_config=base.to_dict(),
        budget=Budget(4).to_dict(),
        best={
            "number": 2,
            "value": 0.9,
            "metric": "val_accuracy",
            "params": {"lr": 0.0031, "batch_size": 64},
            "hparams": hparams,
        },
    )
    path = tmp_path / "best.toml"
    path.write_text(best_toml(summary))
    config = TrainConfig.build(load_toml(path))
    assert config == base.replace(hparams=hparams)
