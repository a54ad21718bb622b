"""What the report claims rests on stated statistics; diverged runs are counted; compute-budget
views; learning-rate sensitivity on validation only; tables that regenerate byte for byte."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from bpfree.comparison import compare
from bpfree.reporting import write_report
from bpfree.reporting.collect import Group
from bpfree.reporting.compute import first_at, to_target, trajectory
from bpfree.reporting.stats import EQUIVALENT, INCONCLUSIVE, NOT_EQUIVALENT, paired_ci, tost
from bpfree.reporting.tables import build_rows, markdown, runs_csv

ROOT = Path(__file__).resolve().parents[1]


def test_the_interval_states_n_df_and_t() -> None:
    ci = paired_ci([91.0, 92.0, 93.0], [90.0, 90.0, 90.0])
    assert (ci.n, ci.df) == (3, 2) and ci.t == pytest.approx(4.3027, abs=1e-4)


def test_tost_tells_equivalent_not_equivalent_and_inconclusive() -> None:
    base = [90.0] * 5
    assert tost([90.1, 89.9, 90.05, 89.95, 90.0], base) == EQUIVALENT
    assert tost([93.0, 92.8, 93.1, 92.9, 93.2], base) == NOT_EQUIVALENT
    assert tost([91.0, 89.0, 90.5, 89.2, 90.9], base) == INCONCLUSIVE  # an interval around 0
    assert tost([90.0], [90.0]) == INCONCLUSIVE  # one pair: no interval
    # an interval containing 0 is not equivalence: a wide one stays inconclusive
    ci = paired_ci([91.0, 89.0, 90.5, 89.2, 90.9], base)
    assert ci.low is not None and ci.low < 0 < ci.high


def _result(status: str, acc: float | None, n_train: int = 100) -> dict[str, Any]:
    return {
        "status": status,
        "metrics": {"test_accuracy": acc, "num_parameters": 10},
        "cost": {},
        "data": {"n_train": n_train},
        "rule_info": {"reverse_ad": "none", "backward_locking": False, "weight_transport": False},
    }


def _history(accs: list[float], seconds: float = 1.0, flops: float = 10.0) -> list[dict]:
    return [
        {
            "epoch": i + 1,
            "val_accuracy": a,
            "samples": 100,
            "train_wall_time_s": seconds,
            "selection_wall_time_s": seconds / 10,
            "train_flops": flops,
            "selection_flops": flops / 10,
        }
        for i, a in enumerate(accs)
    ]


def _groups() -> dict[str, Group]:
    rule = Group("r", "r", "m", "bp@m", planned={0, 1, 2})
    twin = Group("bp@m", "bp", "m", None, planned={0, 1, 2})
    for seed in (0, 1, 2):
        twin.runs[seed] = _result("completed", 0.90 + seed / 100)
        twin.history[seed] = _history([0.5, 0.8, 0.9])
    rule.runs[0] = _result("completed", 0.88)
    rule.history[0] = _history([0.6, 0.9, 0.9])  # reaches 99% of 0.9 at epoch 2
    rule.runs[1] = _result("completed", 0.85)
    rule.history[1] = _history([0.3, 0.4, 0.5])  # never reaches it
    rule.runs[2] = _result("diverged", None)
    return {"r": rule, "bp@m": twin}


def test_diverged_runs_are_counted_and_never_paired() -> None:
    rows = {r.label: r for r in build_rows(_groups())}
    r = rows["r"]
    assert (r.completed, r.diverged, r.unfinished) == (2, 1, 0)
    assert r.pairs == 2 and r.df == 1  # the diverged seed is out of the pairs, and says so
    assert "2 / 1 / 0" in markdown(list(rows.values()))


def test_compute_to_reach_the_twins_best() -> None:
    groups = _groups()
    points = trajectory(groups["r"].history[0], n_train=100)
    assert [p.passes for p in points] == [1.0, 2.0, 3.0]
    assert points[1].seconds == pytest.approx(2.2) and points[1].flops == pytest.approx(22.0)
    assert first_at(points, 0.891).epoch == 2
    target = to_target(groups["r"], groups)
    assert (target.reached, target.runs) == (1, 2)  # one run never got there; it is counted
    assert target.passes == 2.0 and target.seconds == pytest.approx(2.2)
    twin = to_target(groups["bp@m"], groups)
    assert (twin.reached, twin.runs, twin.passes) == (3, 3, 3.0)
    lines = runs_csv(groups).splitlines()
    assert len(lines) == 1 + 6 and lines[0].startswith("label,seed,status")
    per_run = {tuple(line.split(",")[:3]): line.split(",") for line in lines[1:]}
    assert per_run["r", "0", "completed"][-4:] == ["2", "2.0", "2.2", "22.0"]
    assert per_run["r", "1", "completed"][-4:] == ["", "", "", ""]  # never reached: empty
    assert per_run["r", "2", "diverged"][-4:] == ["", "", "", ""]


def test_learning_rate_grid_is_scored_on_validation_only(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    result = compare(
        rules="mf",
        dataset="digits",
        out=out,
        seeds=1,
        epochs=2,
        train_samples=300,
        models={"mf": "mlp_2x16"},
        lr_grid=[1e-3, 1e-2],
        progress=False,
        log=lambda _: None,
    )
    manifest = json.loads((out / "compare.json").read_text())
    assert manifest["lr_grid"]["values"] == [1e-3, 1e-2]
    labels = {g.label for g in result.grid}
    assert labels == {"mf@lr=0.001", "mf@lr=0.01", "bp@mlp_2x16@lr=0.001", "bp@mlp_2x16@lr=0.01"}
    for g in result.grid:
        res = json.loads((out / "runs" / g.key / "result.json").read_text())
        assert res["metrics"]["test_accuracy"] is None  # never tested
        assert res["metrics"]["val_accuracy"] is not None
        assert res["config"]["hparams"]["lr"] == g.lr
        assert "test_flops" not in res["cost"]
    assert (out / "report" / "lr_sensitivity.png").stat().st_size > 1000


def test_report_tables_regenerate_byte_for_byte(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    compare(
        rules="mf",
        dataset="digits",
        out=out,
        seeds=2,
        epochs=2,
        train_samples=300,
        models={"mf": "mlp_2x16"},
        progress=False,
        log=lambda _: None,
    )
    names = ("table.md", "table.csv", "table.tex", "runs.csv")
    first = {n: (out / "report" / n).read_bytes() for n in names}
    copy = tmp_path / "copy"  # a reader's checkout: the small per-run files only, no weights
    for run in (out / "runs").iterdir():
        (copy / "runs" / run.name).mkdir(parents=True)
        for name in ("result.json", "metrics.jsonl", "config.json", "env.json"):
            shutil.copy(run / name, copy / "runs" / run.name / name)
    shutil.copy(out / "compare.json", copy / "compare.json")
    write_report(copy, plots=False)
    for name, data in first.items():
        assert (copy / "report" / name).read_bytes() == data, name


COMMITTED = sorted(p.parent for p in (ROOT / "benchmarks" / "results").rglob("compare.json"))


@pytest.mark.parametrize("folder", COMMITTED, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_comparisons_regenerate_their_tables(folder: Path, tmp_path: Path) -> None:
    """A committed comparison ships its per-run files; `bpfree report` rebuilds its tables."""
    copy = tmp_path / "c"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("report"))
    assert (copy / "runs").is_dir(), f"{folder} ships no per-run files"
    assert not list(copy.rglob("*.pt")), "committed results hold no weights"
    write_report(copy, plots=False)
    for name in ("table.md", "table.csv", "table.tex", "runs.csv"):
        want = (folder / "report" / name).read_bytes()
        assert (copy / "report" / name).read_bytes() == want, name


def test_rows_near_chance_are_flagged_and_short_budgets_called_smoke_tests() -> None:
    from bpfree.reporting import smoke_test

    rows = {r.label: r for r in build_rows(_groups(), chance_pct=80.0)}
    assert rows["r"].not_converged and not rows["bp@m"].not_converged  # 87 < 90 <= 91
    assert "not converged at this budget" in markdown(list(rows.values()))
    assert "| r | m | bp@m |" in markdown(list(rows.values()))  # each Δ names its twin
    short = {"runs": [{"config": {"epochs": 2, "train_samples": 5000}}]}
    full = {"runs": [{"config": {"epochs": 30, "train_samples": None}}]}
    assert "Smoke test: 2 data passes on the first 5,000" in (smoke_test(short) or "")
    assert smoke_test(full) is None
    tuned = {"runs": [{"config": {"epochs": 2, "k_shot": 512, "init_from": "probe"}}]}
    said = smoke_test(tuned) or ""
    assert said.startswith("Short budget: 2 data passes of fine-tuning on 512 training examples")
    assert "full training set" not in said and "pipeline" not in said
