"""A comparison's manifest, ``compare.json``: what it plans (every run's settings), its
identity (a digest), and whether a manifest already in ``--out`` plans the same comparison,
also when an earlier bpfree version wrote it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from bpfree.comparison.plan import Entry, GridRun, PlannedRun, plan_digest
from bpfree.config import TrainConfig
from bpfree.engine.io import MANIFEST_FIELDS, read_json, write_json
from bpfree.errors import ConfigError
from bpfree.rules import RULES

MANIFEST = "compare.json"


def check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` into ``out``, refusing to when ``out`` holds another comparison."""
    path = out / MANIFEST
    if path.exists():
        old = read_json(path, MANIFEST_FIELDS)
        if old.get("digest") != manifest["digest"] and not same_plan(old, manifest):
            raise ConfigError(
                f"{out} holds a different comparison (other rules, seeds or settings); "
                "rerun with the same options to continue it, or choose another --out"
            )
    write_json(path, manifest)


def digest(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def runs_record(plan: list[PlannedRun]) -> list[dict[str, Any]]:
    return [{"key": r.key, "label": r.label, "config": r.config.to_dict()} for r in plan]


def build_manifest(
    dataset: str,
    seeds: list[int],
    entries: list[Entry],
    plan: list[PlannedRun],
    grid: list[GridRun],
    twin: str,
    request: dict[str, Any] | None,
    refs: list[PlannedRun],
) -> dict[str, Any]:
    key = plan_digest(plan)
    if grid:
        key = digest(key, plan_digest(grid))
    if refs:
        key = digest(key, plan_digest(refs))
    manifest: dict[str, Any] = {
        "digest": key if request is None else digest(key, request),
        "dataset": dataset,
        "seeds": seeds,
        "twin_mode": twin,
        "entries": [
            {
                "label": e.label,
                "rule": e.rule,
                "model": e.model,
                "hparams": e.hparams,
                "twin": e.twin,
                "twin_hparams": e.twin_hparams,
            }
            for e in entries
        ],
        "runs": runs_record(plan),
    }
    if grid:
        manifest["lr_grid"] = {
            "values": sorted({g.lr for g in grid}),
            "seed": grid[0].config.seed,
            "runs": [
                {
                    "key": g.key,
                    "label": g.label,
                    "base": g.base,
                    "lr": g.lr,
                    "config": g.config.to_dict(),
                }
                for g in grid
            ],
        }
    if refs:  # each parallel run's one-process reference, for the speedup
        manifest["one_process"] = {
            "runs": [
                {
                    "key": r.key,
                    "label": r.label,
                    "seed": r.config.seed,
                    "config": r.config.to_dict(),
                }
                for r in refs
            ]
        }
    return manifest


def _differ_only_in_defaults(old: dict[str, Any], new: dict[str, Any], defaults: dict) -> bool:
    """Equal but for keys one side lacks and the other holds at their default."""
    for key in set(old) | set(new):
        if key in old and key in new:
            if old[key] != new[key]:
                return False
        elif key not in defaults or old.get(key, new.get(key)) != defaults[key]:
            return False
    return True


def _same_config(old: Any, new: Any) -> bool:
    if not (isinstance(old, dict) and isinstance(new, dict)) or old.get("rule") != new["rule"]:
        return False
    top = {
        f.name: f.default
        for f in dataclasses.fields(TrainConfig)
        if f.default is not dataclasses.MISSING
    }
    hparams = RULES.get(new["rule"]).Hparams().to_dict()
    rest = ({k: v for k, v in cfg.items() if k != "hparams"} for cfg in (old, new))
    return _differ_only_in_defaults(*rest, top) and _differ_only_in_defaults(
        old.get("hparams") or {}, new.get("hparams") or {}, hparams
    )


def _same_runs(olds: Any, news: list[dict[str, Any]]) -> bool:
    if not isinstance(olds, list) or len(olds) != len(news):
        return False
    for o, n in zip(olds, news, strict=True):
        if not isinstance(o, dict) or _without(o, "config") != _without(n, "config"):
            return False
        if not _same_config(o.get("config"), n["config"]):
            return False
    return True


def _without(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


def same_plan(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether a comparison manifest written by an earlier version plans the runs of ``new``:
    the same requests and run keys, every run's settings equal but for settings added since (or
    removed) that sit at their defaults. An untuned comparison committed in parts can so be
    continued by a later version. A tuned one is never matched this way (its stored runs hold
    the tuned settings, not the request)."""
    sections = ("runs", "lr_grid", "one_process")
    if "tuning" in old or _without(old, "digest", "shared", *sections) != _without(
        new, "digest", "shared", *sections
    ):
        return False
    if not _same_runs(old.get("runs"), new["runs"]):
        return False
    for section in sections[1:]:
        olds, news = old.get(section), new.get(section)
        if (olds is None) != (news is None):
            return False
        if news is not None and (
            not isinstance(olds, dict)
            or _without(olds, "runs") != _without(news, "runs")
            or not _same_runs(olds.get("runs"), news["runs"])
        ):
            return False
    return True
