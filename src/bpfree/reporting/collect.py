"""Read a comparison directory back: its manifest, each run's result and per-epoch metrics."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpfree.engine.io import (
    ENTRY_FIELDS,
    MANIFEST_FIELDS,
    PLANNED_FIELDS,
    RESULT_FIELDS,
    check_fields,
    read_json,
)
from bpfree.errors import ConfigError, shorten

COST_COLUMNS = ("train_wall_time", "gpu_energy", "cpu_energy", "peak_tensor_memory", "train_flops")


@dataclass
class Group:
    """All seeds of one label (a rule variant, or a backprop twin ``bp@<model>``)."""

    label: str
    rule: str
    model: str
    twin: str | None  # label of its backprop twin; None for a twin itself
    runs: dict[int, dict[str, Any]] = field(default_factory=dict)  # seed -> result.json
    history: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # seed -> epochs
    planned: set[int] = field(default_factory=set)  # the seeds the comparison plans
    # seed -> epochs of the same run in one process (compare --one-process-reference)
    reference: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    def completed(self) -> dict[int, dict[str, Any]]:
        return {s: r for s, r in self.runs.items() if r.get("status") == "completed"}

    def counts(self) -> tuple[int, int, int]:
        """(completed, diverged, not finished: interrupted, failed or not run yet)."""
        done = len(self.completed())
        diverged = sum(1 for r in self.runs.values() if r.get("status") == "diverged")
        return done, diverged, len(self.planned) - done - diverged

    def values(self, metric: str) -> dict[int, float]:
        return {
            s: r["metrics"][metric]
            for s, r in self.completed().items()
            if r["metrics"].get(metric) is not None
        }

    def cost(self, name: str) -> dict[int, dict[str, Any]]:
        return {s: r["cost"][name] for s, r in self.completed().items() if name in r["cost"]}


def read_manifest(path: Path) -> dict[str, Any]:
    """``compare.json``, checked: its entries and runs are what the report reads."""
    manifest = read_json(path, MANIFEST_FIELDS)
    for entry in manifest["entries"]:
        check_fields(entry, ENTRY_FIELDS, path)
    labels = {e["label"] for e in manifest["entries"]} | {e["twin"] for e in manifest["entries"]}
    for run in manifest["runs"]:
        check_fields(run, PLANNED_FIELDS, path)
        seed = run["config"].get("seed")
        if run["label"] not in labels or not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(
                f"{path} is corrupt (run {shorten(run['key'])} has an unknown label or no seed); "
                "delete it, or the run folder holding it, and rerun"
            )
    return manifest


def load_comparison(path: str | Path) -> tuple[dict[str, Any], dict[str, Group]]:
    root = Path(path)
    manifest_path = root / "compare.json"
    if not manifest_path.exists():
        raise ConfigError(
            f"{root} is not a comparison directory (no compare.json); "
            "make one with `bpfree compare`"
        )
    manifest = read_manifest(manifest_path)
    groups: dict[str, Group] = {}
    for e in manifest["entries"]:
        groups[e["label"]] = Group(e["label"], e["rule"], e["model"], e["twin"])
        twin_rule = e["twin"].split("@", 1)[0]  # "<baseline>@<model>"
        groups.setdefault(e["twin"], Group(e["twin"], twin_rule, e["model"], None))
    for run in manifest["runs"]:
        run_dir = root / "runs" / run["key"]
        group = groups[run["label"]]
        seed = run["config"].get("seed")
        group.planned.add(seed)
        if (run_dir / "result.json").exists():
            group.runs[seed] = read_json(run_dir / "result.json", RESULT_FIELDS)
        if (run_dir / "metrics.jsonl").exists():
            group.history[seed] = _epochs(run_dir / "metrics.jsonl")
    for run in manifest.get("one_process", {}).get("runs", []):
        run_dir = root / "runs" / str(run.get("key"))
        group, seed = groups.get(str(run.get("label"))), run.get("seed")
        if group is not None and isinstance(seed, int) and (run_dir / "result.json").exists():
            group.reference[seed] = _epochs(run_dir / "metrics.jsonl")
    return manifest, groups


def _epochs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def load_grid(root: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The learning-rate grid's finished runs: {base, lr, status, val_accuracy}."""
    out = []
    for run in manifest.get("lr_grid", {}).get("runs", []):
        path = root / "runs" / run["key"] / "result.json"
        if path.exists():
            result = read_json(path, RESULT_FIELDS)
            acc = result["metrics"].get("val_accuracy")
            out.append(
                {"base": run["base"], "lr": run["lr"], "status": result["status"], "val": acc}
            )
    return out


def commits(root: Path, manifest: dict[str, Any]) -> dict[str, int]:
    """How many runs came from each commit (``-dirty``: from a tree with uncommitted changes)."""
    out: dict[str, int] = {}
    for run in manifest["runs"]:
        env = root / "runs" / run["key"] / "env.json"
        if env.exists():
            sha = str(read_json(env, {}).get("git_sha") or "unknown")
            out[sha] = out.get(sha, 0) + 1
    return out


def first_env(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    for run in manifest["runs"]:
        env = root / "runs" / run["key"] / "env.json"
        if env.exists():
            return read_json(env, {})
    return {}
