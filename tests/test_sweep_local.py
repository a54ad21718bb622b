"""Sweeps on the default local storage (a SQLite file): budget, faults, cost, two processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from bpfree.cli import main
from bpfree.config import TrainConfig, load_toml
from bpfree.engine import RunInterrupted, RunResult
from bpfree.errors import ConfigError
from bpfree.sweeps import Budget, create_or_join, run_study, summarize, work
from bpfree.sweeps import objective as objective_mod
from sweep_helpers import (
    TINY,
    assert_exactly_n,
    load_trials,
    study_name,
)

optuna = pytest.importorskip("optuna", reason="sweeps need the 'sweep' extra (optuna)")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sweeps.db'}"


def test_exact_budget_stored_with_the_study_and_cost_adds_up(
    storage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = study_name()
    base = TrainConfig.build(TINY)
    run_study(base, Budget(n_trials=4, sampler_seed=5), study=name, storage=storage)
    trials = assert_exactly_n(name, storage, 4)
    study = optuna.load_study(study_name=name, storage=storage)
    attrs = study.user_attrs
    assert attrs["budget"]["n_trials"] == 4 and attrs["budget"]["sampler_seed"] == 5
    assert attrs["base_config"] == base.to_dict()
    assert attrs["sampler_pruner"]["pruner"]["name"] == "MedianPruner"
    assert set(attrs["search_space"]) == {"lr", "weight_decay", "batch_size"}
    # The sweep's recorded cost is the sum of its trials' costs.
    total = sum(t.user_attrs["cost"]["trial_wall_time_s"] for t in trials)
    train = sum(t.user_attrs["cost"]["readings"]["train_wall_time"]["value"] for t in trials)
    assert attrs["cost"]["trial_wall_time_s"] == pytest.approx(total)
    assert attrs["cost"]["readings"]["train_wall_time"]["value"] == pytest.approx(train)
    # Tuning never touches the test set.
    assert all("test_accuracy" not in str(t.user_attrs) for t in trials)

    # A second worker on a finished study runs nothing; a contradicting budget is refused.
    assert work(name, storage).trials == []
    assert main(["sweep", "--study", name, "--storage", storage, "--trials", "5"]) == 2
    assert "created with other settings: n_trials=4 (asked 5)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="epochs=2"):
        create_or_join(name, storage, base={"epochs": 3})
    create_or_join(name, storage, base={**TINY}, budget={"n_trials": 4})  # agreeing: fine

    # --status --export writes settings `bpfree train --config` accepts: the best trial's.
    out = tmp_path / "best.toml"
    assert (
        main(["sweep", "--study", name, "--storage", storage, "--status", "--export", str(out)])
        == 0
    )
    summary = summarize(name, storage)
    config = TrainConfig.build(load_toml(out))
    assert config.hparams == summary.best["hparams"]
    assert config.replace(hparams=base.hparams) == base


def test_diverged_trial_is_failed_with_its_reason_and_replaced(
    storage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = objective_mod.Trainer
    calls = {"n": 0}

    class Diverging(real):  # type: ignore[misc, valid-type]
        def run(self) -> RunResult:
            calls["n"] += 1
            if calls["n"] != 2:
                return super().run()
            result = super().run()  # really trains; then report the loss as non-finite
            result.status, result.reason = "diverged", "non-finite training loss (nan) in epoch 1"
            return result

    monkeypatch.setattr(objective_mod, "Trainer", Diverging)
    name = study_name()
    run_study(TrainConfig.build(TINY), Budget(n_trials=3), study=name, storage=storage)
    trials = assert_exactly_n(name, storage, 3)
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1
    assert failed[0].user_attrs["reason"].startswith("diverged: non-finite training loss")
    assert failed[0].user_attrs["cost"]["trial_wall_time_s"] > 0  # its cost is kept
    replacement = [t for t in trials if t.user_attrs.get("replaces") == failed[0].number]
    assert len(replacement) == 1 and replacement[0].state.name == "COMPLETE"
    summary = summarize(name, storage)
    assert summary.cost["by_state"]["FAIL"]["trials"] == 1  # failed trials' cost is in the sum


def test_interrupted_trial_is_failed_and_requeued_with_its_settings(
    storage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = objective_mod.Trainer

    class CtrlC(real):  # type: ignore[misc, valid-type]
        def run(self) -> RunResult:
            raise RunInterrupted("run interrupted")  # what Ctrl-C or SIGTERM become

    monkeypatch.setattr(objective_mod, "Trainer", CtrlC)
    name = study_name()
    with pytest.raises(RunInterrupted):
        run_study(TrainConfig.build(TINY), Budget(n_trials=2), study=name, storage=storage)
    [stopped] = load_trials(name, storage)[2:]  # after the two tickets: nothing else yet
    monkeypatch.setattr(objective_mod, "Trainer", real)
    work(name, storage)  # another worker (here: the same process) finishes the study
    trials = assert_exactly_n(name, storage, 2)
    first = trials[0]
    assert first.state.name == "FAIL" and "interrupted" in first.user_attrs["reason"]
    assert stopped.state.name == "WAITING" and stopped.user_attrs["retry_of"] == 0
    retry = trials[stopped.number]
    assert retry.state.name == "COMPLETE" and retry.params == first.params  # same settings


def test_pruned_trials_count_toward_the_budget_and_keep_their_cost(
    storage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class PruneSecond(optuna.pruners.BasePruner):
        def prune(self, study: Any, trial: Any) -> bool:
            return trial.user_attrs.get("slot") == 1 and trial.last_step == 1

    monkeypatch.setattr(Budget, "make_pruner", lambda self: PruneSecond())
    name = study_name()
    run_study(
        TrainConfig.build({**TINY, "epochs": 3}), Budget(n_trials=3), study=name, storage=storage
    )
    trials = assert_exactly_n(name, storage, 3)
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert [t.user_attrs["slot"] for t in pruned] == [1]
    assert pruned[0].user_attrs["epochs"] == 1 and pruned[0].value is not None
    assert pruned[0].user_attrs["cost"]["readings"]["train_wall_time"]["value"] > 0
    assert summarize(name, storage).cost["by_state"]["PRUNED"]["trials"] == 1


def test_tuned_setting_cannot_also_be_fixed(storage: str) -> None:
    with pytest.raises(ConfigError, match="lr is tuned by the sweep"):
        create_or_join(
            study_name(), storage, base={**TINY, "hparams": {"lr": 0.5}}, budget={"n_trials": 2}
        )
    with pytest.raises(ConfigError, match="does not exist"):
        work(study_name(), storage)


# Two worker processes at once on the default local file: tests/test_sweep_docs.py runs the
# documented one-machine commands, which do exactly that.


def test_concurrent_claims_never_share_a_ticket(storage: str) -> None:
    # Optuna's own WAITING -> RUNNING switch reads, then writes: SQLite lets two workers both
    # win it. claim_ticket's single conditional UPDATE does not.
    import threading

    from bpfree.sweeps import open_storage
    from bpfree.sweeps.worker import claim_ticket

    study = optuna.create_study(study_name="claims", storage=open_storage(storage))
    for slot in range(40):
        study.enqueue_trial({}, user_attrs={"slot": slot})
    claimed: list[int] = []

    def claimer() -> None:
        raw = open_storage(storage)
        mine = optuna.load_study(study_name="claims", storage=raw)
        waiting = (optuna.trial.TrialState.WAITING,)
        while tickets := mine.get_trials(deepcopy=False, states=waiting):
            claimed.extend(t.number for t in tickets[:1] if claim_ticket(optuna, raw, t._trial_id))

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == list(range(40))


def test_worker_dying_between_claim_and_first_heartbeat_is_noticed(storage: str) -> None:
    from bpfree.sweeps import Worker

    class Died(BaseException):
        pass

    name = study_name()
    budget = Budget(n_trials=2, heartbeat_interval_s=1, grace_period_s=2, pruner="none")
    victim = Worker(create_or_join(name, storage, base=TINY, budget=budget))
    real_beat = victim.storage.record_heartbeat

    def beat(trial_id: int) -> None:
        if victim.storage.get_trial(trial_id).state.name == "RUNNING":
            raise Died  # dies at the first beat after its claim
        real_beat(trial_id)

    victim.storage.record_heartbeat = beat
    with pytest.raises(Died):
        victim.work()
    [stuck] = [t for t in load_trials(name, storage) if t.state.name == "RUNNING"]
    work(name, storage)  # notices the silent trial after the grace period and re-runs its slot
    trials = assert_exactly_n(name, storage, 2)
    assert trials[stuck.number].state.name == "FAIL"


def test_trial_0_runs_the_base_settings_so_tuning_cannot_end_below_them(storage: str) -> None:
    """``defaults_first`` (the default): the first ticket carries the base settings."""
    from bpfree.rules import RULES
    from bpfree.sweeps.budget import base_point, search_space

    name = study_name()
    base = TrainConfig.build(TINY)
    run_study(base, Budget(n_trials=3), study=name, storage=storage)
    trials = sorted(assert_exactly_n(name, storage, 3), key=lambda t: t.number)
    defaults = RULES.get("mf").Hparams().to_dict()
    first = trials[0].params
    assert first["lr"] == defaults["lr"] and first["batch_size"] == defaults["batch_size"]
    # mf's default weight decay, 0, lies below its log range: the range's low end stands in
    space = search_space("mf")
    assert defaults["weight_decay"] == 0.0 and first["weight_decay"] == space["weight_decay"]["low"]
    assert first == base_point(base, space)
    study = optuna.load_study(study_name=name, storage=storage)
    assert study.user_attrs["first_trial"] == first
    assert all(t.params != first for t in trials[1:])  # the others are drawn
    # --no-defaults-first: every trial drawn, and the budget records it
    other = study_name()
    run_study(base, Budget(n_trials=2, defaults_first=False), study=other, storage=storage)
    drawn = sorted(assert_exactly_n(other, storage, 2), key=lambda t: t.number)
    assert drawn[0].params != first
    assert (
        optuna.load_study(study_name=other, storage=storage).user_attrs["budget"]["defaults_first"]
        is False
    )


def test_base_point_projects_onto_the_space() -> None:
    from bpfree.sweeps.budget import base_point

    space: dict[str, dict[str, Any]] = {
        "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True, "step": None},
        "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True, "step": None},
        "batch_size": {"type": "categorical", "choices": [64, 128, 256]},
    }
    config = TrainConfig.build({**TINY, "hparams": {"lr": 0.5, "batch_size": 100}})
    point = base_point(config, space)
    assert point == {"lr": 1e-2, "weight_decay": 1e-6, "batch_size": 128}
