"""benchmarks/collect_comparison.py: what a committed comparison ships (finished runs' small
files only) and what it refuses (a stored absolute path)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from bpfree.comparison import compare

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "collect_comparison", ROOT / "benchmarks" / "collect_comparison.py"
)
assert _spec is not None and _spec.loader is not None
collect_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(collect_module)


@pytest.fixture()
def comparison(tmp_path: Path) -> Path:
    out = tmp_path / "cmp"
    compare(
        rules="mf",
        dataset="digits",
        seeds=1,
        epochs=1,
        models={"mf": "mlp_2x16"},
        out=out,
        report=False,
        progress=False,
    )
    return out


def test_only_finished_runs_are_collected_without_weights(comparison: Path, tmp_path: Path) -> None:
    runs = comparison / "runs"
    finished = sorted(p.name for p in runs.iterdir())
    assert len(finished) == 2 and all((runs / k / "model.pt").exists() for k in finished)
    # a run stopped before its first checkpoint: an "interrupted" result and nothing to resume
    early = runs / "mf--mlp_2x16--s7"
    shutil.copytree(runs / finished[0], early)
    result = json.loads((early / "result.json").read_text())
    (early / "result.json").write_text(json.dumps({**result, "status": "interrupted"}))
    # a run still training: a checkpoint beside an older result
    running = runs / "mf--mlp_2x16--s8"
    shutil.copytree(runs / finished[0], running)
    (running / "checkpoint.pt").write_bytes(b"weights")
    done, waiting = collect_module.collect(comparison, tmp_path / "results")
    assert (done, waiting) == (2, 2)
    shipped = tmp_path / "results" / "runs"
    assert sorted(p.name for p in shipped.iterdir()) == finished
    for key in finished:
        names = sorted(p.name for p in (shipped / key).iterdir())
        assert names == ["config.json", "env.json", "metrics.jsonl", "result.json"]


def test_an_absolute_local_path_is_refused(comparison: Path, tmp_path: Path) -> None:
    run = next((comparison / "runs").iterdir())
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data_dir": "/home/me/data"}))
    with pytest.raises(SystemExit, match="absolute local path"):
        collect_module.collect(comparison, tmp_path / "results")
