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


def machines(out: Path, depths: list[int]) -> str:
    """Where the runs ran, from their env.json files: machine, torch threads and commit."""
    seen: dict[str, int] = {}
    for depth in depths:
        for env in sorted((out / f"d{depth}" / "runs").glob("*/env.json")):
            e = json.loads(env.read_text())
            key = (
                f"{e['cpu']}, {e['cpu_count']} cores, {e['torch_threads']} torch thread(s), "
                f"torch {e['torch']}, commit {e['git_sha'][:7]}"
            )
            seen[key] = seen.get(key, 0) + 1
    return "".join(f"\nRuns: {n} on {key}." for key, n in seen.items()) + "\n"


def best(accs: dict[float, float | None]) -> str:
    """The best accuracy of an lr grid, with its lr ("all diverged" if none completed)."""
    done = {lr: a for lr, a in accs.items() if a is not None}
    if not done:
        return "all diverged" if accs else "n/a"
    lr = max(done, key=lambda k: done[k])
    return f"{done[lr]:.2f} ({lr:g})"


def grid_table(out: Path, rules: list[str], depths: list[int]) -> str:
    """Best validation accuracy over each comparison's learning-rate grid (its first seed), for
    every rule and twin: selection on validation only, no test accuracy involved."""
    lines = [
        "| rule | hidden layers | rule: best val acc % (lr) | twin: best val acc % (lr) "
        "| rule val acc % at each lr |",
        "|---|---|---|---|---|",
    ]
    for rule in rules:
        for depth in depths:
            folder = out / f"d{depth}"
            plan = json.loads((folder / "compare.json").read_text())
            twin = next(e for e in plan["entries"] if e["label"] == rule)["twin"]
            vals: dict[str, dict[float, float | None]] = {rule: {}, twin: {}}
            for run in plan.get("lr_grid", {}).get("runs", []):
                if run["base"] not in vals:
                    continue
                path = folder / "runs" / run["key"] / "result.json"
                if not path.exists():
                    continue
                result = json.loads(path.read_text())
                ok = result["status"] == "completed"
                acc = 100 * result["metrics"]["val_accuracy"] if ok else None
                vals[run["base"]][run["lr"]] = acc

            each = ", ".join(
                f"{lr:g}: " + ("div." if a is None else f"{a:.1f}")
                for lr, a in sorted(vals[rule].items())
            )
            lines.append(f"| {rule} | {depth} | {best(vals[rule])} | {best(vals[twin])} | {each} |")
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
    ap.add_argument("--lr-grid", default="", help="also train at each lr (first seed, validation)")
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
            lr_grid=[float(v) for v in args.lr_grid.split(",") if v] or None,
            report=False,
            progress=False,
        )
    plan = json.loads((args.out / f"d{depths[0]}" / "compare.json").read_text())
    first = plan["runs"][0]["config"]  # the budget as the comparisons recorded it
    text = (
        f"Budget: {first['epochs']} data passes per run on the first {first['train_samples']} "
        f"training images of {first['dataset']}; seeds {plan['seeds']}; twins "
        f"{plan['twin_mode']}.\n\n"
        + table(args.out, rules, depths)
        + (
            "\nLearning-rate grid (first seed, validation accuracy, best epoch):\n\n"
            + grid_table(args.out, rules, depths)
            if args.lr_grid
            or "lr_grid" in (args.out / f"d{depths[0]}" / "compare.json").read_text()
            else ""
        )
        + machines(args.out, depths)
    )
    print(text)
    if args.write:
        args.write.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
