"""The flat public API: train, compare, sweep and report from `import bpfree`, keyword-only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import bpfree


def test_the_api_names_resolve_lazily() -> None:
    code = "import sys, bpfree; assert 'torch' not in sys.modules; print(bpfree.__version__)"
    assert subprocess.run([sys.executable, "-c", code], check=True).returncode == 0
    for name in ("train", "compare", "sweep", "report", "build_rule", "load_data"):
        assert name in bpfree.__all__ and callable(getattr(bpfree, name)), name
    assert "fa" in bpfree.RULES.names() and "fa" in bpfree.list_rules()


def test_compare_report_and_sweep_from_python(tmp_path: Path) -> None:
    result = bpfree.compare(
        rules="fa",
        dataset="digits",
        out=tmp_path / "cmp",
        seeds=1,
        epochs=1,
        train_samples=200,
        models={"fa": "mlp_2x8"},
        report=False,
        progress=False,
        log=lambda _: None,
    )
    assert {r.status for r in result.results.values()} == {"completed"}
    table = bpfree.report(tmp_path / "cmp", plots=False)
    assert "| fa | mlp_2x8 | bp@mlp_2x8 | 1 / 0 / 0 |" in table
    summary = bpfree.sweep(
        study="api",
        storage=f"sqlite:///{tmp_path / 's.db'}",
        rule="fa",
        dataset="digits",
        model="mlp_2x8",
        epochs=1,
        train_samples=200,
        trials=2,
    )
    assert summary.counts.get("COMPLETE", 0) + summary.counts.get("PRUNED", 0) == 2
