"""The parallel runs of a comparison (``--stages`` or ``--replicas``): each process's figures
from ``metrics.jsonl`` (engine/pipeline.py records them per epoch)."""

from __future__ import annotations

from typing import Any

from bpfree.reporting.collect import Group
from bpfree.reporting.tables import _md

PARALLEL_HEADERS = [
    "run",
    "processes",
    "schedule",
    "samples/s (training windows)",
    "per process, last epoch: busy, wait s, MB sent, peak RSS MiB",
]
PARALLEL_NOTE = (
    "Samples per second over the runs' training windows. The speedup over one process needs "
    "the same runs in one process, which a comparison does not train: `benchmarks/pipeline.py` "
    "measures both in one run."
)


def _process(p: dict[str, Any]) -> str:
    busy = "n/a" if p.get("busy") is None else f"{p['busy']:.2f}"
    wait = "n/a" if p.get("wait_s") is None else f"{p['wait_s']:.2f}"
    return f"{busy}, {wait}, {p.get('bytes_sent', 0) / 1e6:.0f}, {p.get('peak_rss_mib', 0):.0f}"


def parallel_rows(groups: dict[str, Group]) -> list[tuple[bool, list[str]]]:
    """(is a twin, cells) for every run trained over several processes, by label and seed."""
    out = []
    for label, group in groups.items():
        for seed in sorted(group.history):
            records = group.history[seed]
            last = records[-1] if records else {}
            processes = last.get("processes") or []
            if len(processes) < 2:
                continue
            wall = sum(float(r.get("train_wall_time_s") or 0.0) for r in records)
            samples = sum(int(r.get("samples") or 0) for r in records)
            rate = f"{samples / wall:.0f}" if wall > 0 else "n/a"
            schedule = f"{last.get('parallel', 'n/a')}: {last.get('schedule', 'n/a')}"
            cells = [f"{label}, seed {seed}", str(len(processes)), schedule, rate]
            out.append((group.twin is None, [*cells, "; ".join(map(_process, processes))]))
    return out


def parallel_markdown(groups: dict[str, Group]) -> str:
    """A section for ``table.md``; empty when no run was parallel."""
    rows = parallel_rows(groups)
    if not rows:
        return ""
    return f"\n## Parallel runs\n\n{_md(PARALLEL_HEADERS, [c for _, c in rows])}\n{PARALLEL_NOTE}\n"
