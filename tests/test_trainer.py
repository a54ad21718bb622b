"""The trainer on small real data (scikit-learn digits): determinism, stopping, resume, faults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import bpfree
from bpfree.engine import RunInterrupted, Trainer
from bpfree.engine.trainer import CHECKPOINT

SMALL = dict(model="mlp_2x64", dataset="digits", epochs=4, device="cpu")


def test_same_seed_same_metrics_and_distinct_seeds_differ() -> None:
    a = bpfree.train(rule="mf", seed=3, **SMALL, progress=False)
    b = bpfree.train(rule="mf", seed=3, **SMALL, progress=False)
    c = bpfree.train(rule="mf", seed=4, **SMALL, progress=False)
    assert a.status == "completed" and a.metrics == b.metrics
    assert a.metrics != c.metrics
    assert a.metrics["test_accuracy"] > 0.5  # chance is 0.1


def test_result_json_has_required_fields(tmp_path: Path) -> None:
    res = bpfree.train(rule="bp", seed=0, **SMALL, out=tmp_path / "run", progress=False)
    data = json.loads((tmp_path / "run" / "result.json").read_text())
    for key in ("rule", "model", "dataset", "seed"):
        assert data[key] == getattr(res, key)
    for key in ("test_accuracy", "val_accuracy", "best_epoch", "epochs_trained"):
        assert data["metrics"][key] is not None
    for name in ("train_wall_time", "selection_wall_time", "test_wall_time"):
        reading = data["cost"][name]
        assert set(reading) == {"value", "unit", "source", "note"}
        assert reading["value"] > 0 and reading["unit"] == "s"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["hparams"]["lr"] == 1e-3 and config["epochs"] == 4
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["torch"] and env["python"]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == data["metrics"]["epochs_trained"]
    assert not (tmp_path / "run" / CHECKPOINT).exists()  # a finished run keeps model.pt only
    assert (tmp_path / "run" / "model.pt").exists()


def test_early_stopping_restores_best_epoch() -> None:
    # A tiny patience on a long cap: training stops early, and the reported validation
    # accuracy is the best one seen, from the restored epoch.
    res = bpfree.train(
        rule="bp",
        seed=1,
        model="mlp_1x16",
        dataset="digits",
        epochs=60,
        patience=2,
        device="cpu",
        progress=False,
        hparams={"lr": 0.05},
    )
    hist_best = res.metrics["best_epoch"]
    assert res.metrics["epochs_trained"] < 60
    assert res.metrics["epochs_trained"] == hist_best + 2


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make the n-th checkpoint write raise KeyboardInterrupt right after it lands (Ctrl-C)."""
    original = Trainer._checkpoint
    calls = {"n": 0}

    def patched(self: Trainer, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_checkpoint", patched)


@pytest.mark.parametrize(
    "rule,hp",
    [("mf", {}), ("mf", {"schedule": "sequential"}), ("bp", {}), ("ff", {"lr_cooldown": True})],
)
def test_resume_gives_the_uninterrupted_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rule: str, hp: dict
) -> None:
    settings = dict(rule=rule, seed=5, **SMALL, hparams=hp, progress=False)
    full = bpfree.train(**settings)
    with monkeypatch.context() as m:
        _interrupt_after(m, 3)
        with pytest.raises(RunInterrupted, match="--resume"):
            bpfree.train(**settings, out=tmp_path / "run")
    partial = json.loads((tmp_path / "run" / "result.json").read_text())
    assert partial["status"] == "interrupted"
    assert (tmp_path / "run" / CHECKPOINT).exists()
    resumed = bpfree.train(**settings, out=tmp_path / "run", resume=True)
    assert resumed.metrics == full.metrics
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == list(range(1, len(lines) + 1))
    # Resuming a finished run returns it without training again.
    again = bpfree.train(**settings, out=tmp_path / "run", resume=True)
    assert again.metrics == full.metrics


def test_existing_run_dir_is_not_clobbered(tmp_path: Path) -> None:
    bpfree.train(rule="mf", seed=0, **SMALL, out=tmp_path / "r", progress=False)
    with pytest.raises(bpfree.ConfigError, match="already holds a run"):
        bpfree.train(rule="mf", seed=0, **SMALL, out=tmp_path / "r", progress=False)


def test_resume_with_other_settings_is_refused(tmp_path: Path, monkeypatch) -> None:
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)
        with pytest.raises(RunInterrupted):
            bpfree.train(rule="mf", seed=0, **SMALL, out=tmp_path / "r", progress=False)
    with pytest.raises(bpfree.ConfigError, match=r"different settings.*seed"):
        bpfree.train(rule="mf", seed=1, **SMALL, out=tmp_path / "r", resume=True)


def test_nan_loss_ends_as_diverged(tmp_path: Path) -> None:
    res = bpfree.train(
        rule="bp",
        seed=0,
        model="mlp_2x64",
        dataset="digits",
        epochs=3,
        device="cpu",
        progress=False,
        out=tmp_path / "r",
        hparams={"optimizer": "sgd", "lr": 1e6, "momentum": 0.0},
    )
    assert res.status == "diverged" and "non-finite training loss" in res.reason
    assert res.metrics["test_accuracy"] is None
    data = json.loads((tmp_path / "r" / "result.json").read_text())
    assert data["status"] == "diverged"


def test_sequential_mf_trains_one_phase_per_layer() -> None:
    res = bpfree.train(
        rule="mf",
        seed=0,
        model="mlp_2x64",
        dataset="digits",
        epochs=3,
        device="cpu",
        progress=False,
        hparams={"schedule": "sequential"},
    )
    assert list(res.metrics["phases"]) == ["layer1", "layer2"]
    assert res.metrics["epochs_trained"] == sum(p["epochs"] for p in res.metrics["phases"].values())


def test_invalid_settings_fail_before_training() -> None:
    with pytest.raises(bpfree.ConfigError, match="epochs must be >= 1"):
        bpfree.train(rule="mf", model="mlp_2x64", dataset="digits", epochs=0)
    with pytest.raises(bpfree.ConfigError, match="cannot train 'cnn_3block'"):
        bpfree.train(rule="mf", model="cnn_3block", dataset="digits")
    with pytest.raises(bpfree.ConfigError, match="did you mean: lr"):
        bpfree.train(rule="mf", model="mlp_2x64", dataset="digits", hparams={"lrr": 1})
    with pytest.raises(bpfree.ConfigError, match="unknown setting 'epoch'"):
        bpfree.train(rule="mf", model="mlp_2x64", dataset="digits", epoch=3)


class _Planted:
    """An object whose unpickling would run code (it writes a file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (self.marker, "code ran"))


@pytest.mark.parametrize("kind", ["planted", "truncated"])
def test_a_hostile_or_broken_checkpoint_is_refused_without_running_code(
    tmp_path: Path, kind: str
) -> None:
    import torch

    from bpfree.errors import ConfigError

    settings = dict(rule="mf", seed=0, **SMALL, progress=False)
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "marker"
    if kind == "planted":
        torch.save({"config": {}, "x": _Planted(marker)}, out / "checkpoint.pt")
    else:
        (out / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ConfigError, match="cannot be read as a bpfree checkpoint"):
        bpfree.train(**settings, out=out, resume=True)
    assert not marker.exists()


def test_module_dropout_is_seeded_and_resumes_bit_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model's own dropout (nn.Dropout and F.dropout draw from the global RNG) takes its
    masks from the run seed: the same seed trains the same, a resumed run equals the
    uninterrupted one, and the caller's global RNG is left as it was."""
    settings = dict(rule="bp", seed=2, **{**SMALL, "model": "mlp_2x64_drop10"}, progress=False)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    full = bpfree.train(**settings)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(999)  # another caller state: the run does not depend on it
    assert bpfree.train(**settings).metrics == full.metrics
    assert bpfree.train(**{**settings, "seed": 3}).metrics != full.metrics
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        with pytest.raises(RunInterrupted):
            bpfree.train(**settings, out=tmp_path / "run")
    torch.manual_seed(7)
    resumed = bpfree.train(**settings, out=tmp_path / "run", resume=True)
    assert resumed.metrics == full.metrics
