"""``bpfree report DIR``: tables (Markdown, CSV, LaTeX), plots and a self-contained HTML page."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from bpfree.data import DATASETS
from bpfree.engine.io import write_text
from bpfree.reporting.collect import commits, first_env, load_comparison, load_grid
from bpfree.reporting.html import render, tuning_note, twin_note
from bpfree.reporting.parallel import parallel_markdown
from bpfree.reporting.plots import all_figures
from bpfree.reporting.tables import build_rows, csv_text, latex, markdown, runs_csv


def write_report(path: str | Path, *, plots: bool = True) -> str:
    """Write ``table.md``, ``table.csv``, ``table.tex``, figures and ``report.html`` into
    ``<path>/report``; return the Markdown table."""
    root = Path(path)
    manifest, groups = load_comparison(root)
    rows = build_rows(groups, 100.0 / DATASETS.get(manifest["dataset"]).num_classes)
    out = root / "report"
    smoke = smoke_test(manifest)
    table = (f"**{smoke}**\n\n" if smoke else "") + markdown(rows)
    table += f"\nTwins: {twin_note(manifest)}.\n"
    if manifest.get("tuning"):
        table += f"\n{tuning_note(manifest)}\n"
    table += parallel_markdown(groups)
    write_text(out / "table.md", table)
    write_text(out / "table.csv", csv_text(rows))
    write_text(out / "table.tex", latex(rows))
    write_text(out / "runs.csv", runs_csv(groups))
    figures: dict[str, bytes] = {}
    skipped = None
    if plots and not plotting_available():
        skipped = "figures skipped: matplotlib is not installed (pip install 'bpfree[report]')"
        print(f"bpfree: {skipped}", file=sys.stderr)
    elif plots:
        figures = all_figures(rows, groups, load_grid(root, manifest))
        for name, png in figures.items():
            (out / f"{name}.png").write_bytes(png)
    sources: dict[str, set[str]] = {}
    for g in groups.values():
        for r in g.completed().values():
            for name, reading in r.get("cost", {}).items():
                sources.setdefault(name, set()).add(str(reading.get("source")))
    write_text(
        out / "report.html",
        render(
            manifest,
            first_env(root, manifest),
            groups,
            rows,
            figures,
            sources,
            commits(root, manifest),
            skipped,
            smoke,
        ),
    )
    return table


SMOKE_PASSES = 10  # fewer data passes than this, or a training subset: a smoke test


def smoke_test(manifest: dict[str, Any]) -> str | None:
    """A warning when the comparison's budget makes it a check of the pipeline, not a result.

    Fine-tuning (runs that start from ``--init-from`` weights) is short by design, so there it
    says what the budget was instead: the rows are results at that budget, not converged ones.
    """
    configs = [r["config"] for r in manifest.get("runs", [])]
    if not configs:
        return None
    passes = min(c["epochs"] for c in configs)
    subset = {c.get("train_samples") for c in configs} - {None}
    if passes >= SMOKE_PASSES and not subset:
        return None
    shots = {c.get("k_shot") for c in configs} - {None}
    if shots:
        on = f"{min(shots):,} training examples per class (k-shot)"
    elif subset:
        on = f"the first {min(subset):,} training examples"
    else:
        on = "the full training set"
    if any(c.get("init_from") for c in configs):
        return (
            f"Short budget: {passes} data passes of fine-tuning on {on}. Each row is a result "
            "at this budget; a rule that needs more steps has not converged here."
        )
    return (
        f"Smoke test: {passes} data passes on {on}. A check that the pipeline runs, not a "
        "result: rules compared here have not converged."
    )


def plotting_available() -> bool:
    """Whether the ``report`` extra (matplotlib) is installed."""
    return importlib.util.find_spec("matplotlib") is not None


def report(path: str | Path, *, plots: bool = True) -> str:
    """``bpfree.report(DIR)``: write the report of comparison directory ``DIR`` (tables, figures,
    report.html under ``DIR/report``); return the Markdown table."""
    return write_report(path, plots=plots)


__all__ = ["report", "write_report"]
