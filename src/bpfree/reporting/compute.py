"""Comparisons at equal compute: what each run had spent, epoch by epoch, and what it spent to
reach a target validation accuracy.

A run's trajectory accumulates, per epoch, training data passes, seconds (training plus the
selection passes early stopping needs) and FLOPs (the same two parts). The target of a seed is
``fraction`` (default 99%) of the best validation accuracy its backprop twin reached with that
seed; a twin is measured against its own best. A run that never reaches it is counted, not
dropped.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bpfree.reporting.collect import Group

TARGET_FRACTION = 0.99


@dataclass(frozen=True)
class Point:
    epoch: int
    passes: float  # training data passes so far
    seconds: float | None  # training + selection wall time so far
    flops: float | None  # training + selection FLOPs so far
    val_accuracy: float


def trajectory(history: list[dict[str, Any]], n_train: int | None) -> list[Point]:
    """Cumulative cost after each epoch of a run's ``metrics.jsonl``."""
    points: list[Point] = []
    passes, seconds, flops = 0.0, 0.0, 0.0
    have_s = have_f = True
    for h in history:
        samples = h.get("samples")
        passes += samples / n_train if samples is not None and n_train else 1.0
        parts_s = (h.get("train_wall_time_s"), h.get("selection_wall_time_s"))
        parts_f = (h.get("train_flops"), h.get("selection_flops"))
        have_s = have_s and None not in parts_s
        have_f = have_f and None not in parts_f
        seconds += sum(x for x in parts_s if x is not None)
        flops += sum(x for x in parts_f if x is not None)
        points.append(
            Point(
                h["epoch"],
                passes,
                seconds if have_s else None,
                flops if have_f else None,
                h["val_accuracy"],
            )
        )
    return points


def first_at(points: list[Point], target: float) -> Point | None:
    return next((p for p in points if p.val_accuracy >= target), None)


@dataclass(frozen=True)
class ToTarget:
    reached: int  # runs that reached their target
    runs: int  # completed runs with a target (their twin completed too)
    passes: float | None  # means over the runs that reached it
    seconds: float | None
    flops: float | None


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known and len(known) == len(values) else None


def _best(group: Group, seed: int) -> float | None:
    hist = group.history.get(seed)
    return max((h["val_accuracy"] for h in hist), default=None) if hist else None


def to_target(
    group: Group, groups: dict[str, Group], fraction: float = TARGET_FRACTION
) -> ToTarget:
    """What ``group``'s completed runs spent to reach ``fraction`` of their twin's best."""
    twin = groups[group.twin] if group.twin is not None else group
    hits: list[Point] = []
    runs = 0
    for seed, result in group.completed().items():
        best = _best(twin, seed) if seed in twin.completed() else None
        if best is None:
            continue
        runs += 1
        n_train = result.get("data", {}).get("n_train")
        hit = first_at(trajectory(group.history.get(seed, []), n_train), fraction * best)
        if hit is not None:
            hits.append(hit)
    return ToTarget(
        len(hits),
        runs,
        _mean([h.passes for h in hits]),
        _mean([h.seconds for h in hits]),
        _mean([h.flops for h in hits]),
    )


def run_target(
    group: Group, groups: dict[str, Group], seed: int, fraction: float = TARGET_FRACTION
) -> Point | None:
    """The first epoch at which ``group``'s run ``seed`` reached its target (None: never, or
    no target because its twin did not complete)."""
    twin = groups[group.twin] if group.twin is not None else group
    best = _best(twin, seed) if seed in twin.completed() else None
    if best is None or seed not in group.runs:
        return None
    n_train = group.runs[seed].get("data", {}).get("n_train")
    return first_at(trajectory(group.history.get(seed, []), n_train), fraction * best)
