"""Depth sweep of forward-only rules: does a rule keep learning as hidden layers are added?

    python benchmarks/depth_sweep.py --out runs/depth --write benchmarks/results/depth_sweep.md

For each depth D (default 2, 4, 8 hidden layers) one ``bpfree compare`` runs every rule on its
native network with D hidden layers (same width, dropout and biases as the native one) beside
its matched backprop twin, into ``<out>/d<D>``. Rerun with the same options to continue: each
comparison reuses its finished runs. The table gives, per rule and depth, the test accuracy of
the rule and of its twin (mean ± std over the seeds, n runs) and the paired difference; the
per-depth comparison folders regenerate their own reports (``bpfree report <out>/d<D>``).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

import bpfree
from bpfree.engine.environment import describe
from bpfree.rules import RULES


def at_depth(model: str, depth: int) -> str:
    """``mlp_<d>x<w><suffix>`` with ``depth`` hidden layers."""
    match = re.fullmatch(r"mlp_\d+x(\d+)(.*)", model)
    if match is None:
        raise SystemExit(f"{model}: the depth sweep needs an MLP native network")
    return f"mlp_{depth}x{match.group(1)}{match.group(2)}"


def accuracies(folder: Path) -> dict[str, dict[int, float | None]]:
    """label -> seed -> test accuracy (None for a run that did not complete)."""
    plan = json.loads((folder / "compare.json").read_text())
    found: dict[str, dict[int, float | None]] = {}
    for run in plan["runs"]:
        path = folder / "runs" / run["key"] / "result.json"
        acc = None
        if path.exists():
            result = json.loads(path.read_text())
            if result["status"] == "completed":
                acc = 100 * result["metrics"]["test_accuracy"]
        found.setdefault(run["label"], {})[run["config"]["seed"]] = acc
    return found


def cell(values: list[float]) -> str:
    if not values:
        return "n/a"
    spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.2f}{spread} (n={len(values)})"


def table(out: Path, rules: list[str], depths: list[int]) -> str:
    lines = [
        "| rule | hidden layers | model | rule test acc % | twin test acc % | Δ (pp) | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for rule in rules:
        for depth in depths:
            folder = out / f"d{depth}"
            plan = json.loads((folder / "compare.json").read_text())
            entry = next(e for e in plan["entries"] if e["label"] == rule)
            accs = accuracies(folder)
            own, twin = accs.get(rule, {}), accs.get(entry["twin"], {})
            ok = [a for a in own.values() if a is not None]
            twin_ok = [a for a in twin.values() if a is not None]
            pairs = [
                own[s] - twin[s] for s in own if own[s] is not None and twin.get(s) is not None
            ]
            delta = f"{statistics.mean(pairs):+.2f} (n={len(pairs)})" if pairs else "n/a"
            failed = sum(a is None for a in own.values())
            lines.append(
                f"| {rule} | {depth} | {entry['model']} | {cell(ok)} | {cell(twin_ok)} "
                f"| {delta} | {failed} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rules", default="pepita,foton")
    ap.add_argument("--depths", default="2,4,8")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--seeds", default="2")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--train-samples", type=int, default=10000)
    ap.add_argument("--out", type=Path, default=Path("runs/depth"))
    ap.add_argument("--write", type=Path, help="Markdown file for the table")
    ap.add_argument("--table-only", action="store_true", help="only summarise finished runs")
    args = ap.parse_args()
    rules = [r for r in args.rules.split(",") if r]
    depths = [int(d) for d in args.depths.split(",")]
    kind = bpfree.DATASETS.get(args.dataset).kind
    for depth in depths if not args.table_only else []:
        models = {r: at_depth(RULES.get(r).info.native_model(kind), depth) for r in rules}
        print(f"depth {depth}: {models}", file=sys.stderr, flush=True)
        bpfree.compare(
            rules=",".join(rules),
            dataset=args.dataset,
            out=args.out / f"d{depth}",
            seeds=args.seeds,
            epochs=args.epochs,
            train_samples=args.train_samples,
            models=models,
            report=False,
            progress=False,
        )
    text = (
        f"Budget: {args.epochs} data passes per run on the first {args.train_samples} "
        f"training images of {args.dataset}; seeds {args.seeds}; twins matched.\n\n"
        + table(args.out, rules, depths)
        + "\nMachine: {cpu}, {cpu_count} cores; torch {torch}; commit {git_sha}\n".format(
            **describe()
        )
    )
    print(text)
    if args.write:
        args.write.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
