"""Copy a comparison's small files into a results folder and write its report there.

    python benchmarks/collect_comparison.py runs/fmnist-mlp benchmarks/results/fashion_mnist/mlp

Copies ``compare.json`` and, for every finished run (a ``result.json`` and no checkpoint; a run
interrupted before its first checkpoint is not finished), its ``result.json``,
``metrics.jsonl``, ``config.json`` and ``env.json``: no weights, no checkpoints, no tuning
database. Then writes the report (tables, figures, ``report.html``)
into the destination, so ``bpfree report DEST`` regenerates the committed tables byte for byte.
A comparison still running can be collected again later: finished runs are added.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

from bpfree.comparison.runner import finished_run
from bpfree.reporting import write_report

SMALL = ("result.json", "metrics.jsonl", "config.json", "env.json")
LOCAL_PATH = re.compile(r"/(home|root|tmp|work)/")


def collect(src: Path, dst: Path) -> tuple[int, int]:
    """Copy the finished runs; returns (copied, still running or not started)."""
    if not (src / "compare.json").exists():
        raise SystemExit(f"{src} is not a comparison directory (no compare.json)")
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "compare.json", dst / "compare.json")
    done = waiting = 0
    for run in sorted((src / "runs").iterdir()) if (src / "runs").exists() else []:
        if not finished_run(run):
            waiting += 1
            continue
        (dst / "runs" / run.name).mkdir(parents=True, exist_ok=True)
        for name in SMALL:
            shutil.copy(run / name, dst / "runs" / run.name / name)
        done += 1
    for path in dst.rglob("*.json*"):
        if LOCAL_PATH.search(path.read_text()):
            raise SystemExit(f"{path} holds an absolute local path; not committing it")
    return done, waiting


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", type=Path, help="the comparison directory (compare --out)")
    ap.add_argument("dst", type=Path, help="the results folder to write")
    args = ap.parse_args()
    done, waiting = collect(args.src, args.dst)
    print(write_report(args.dst), end="")
    print(f"{done} finished runs collected, {waiting} not finished", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
