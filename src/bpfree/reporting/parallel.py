"""The parallel runs of a comparison (``--stages`` or ``--replicas``): each process's figures
from ``metrics.jsonl`` (engine/pipeline.py records them per epoch), and the speedup over the
same run in one process where the comparison trained that (``--one-process-reference``)."""

from __future__ import annotations

from typing import Any

from bpfree.reporting.collect import Group
from bpfree.reporting.tables import md_table

PARALLEL_HEADERS = [
    "run",
    "processes",
    "schedule",
    "samples/s (training windows)",
    "one process: samples/s",
    "speedup",
    "per process, last epoch: busy, wait s, MB sent, peak RSS MiB",
]
PARALLEL_NOTE = (
    "Samples per second over the runs' training windows. Speedup: the parallel run's samples/s "
    "over the same run's in one process (same settings, data and seed, validation only), "
    "trained in this comparison by `compare --one-process-reference` on its first seed; the "
    "two ran one after the other, not interleaved, so a change in the machine's load between "
    "them shows in the ratio (`benchmarks/pipeline.py` interleaves repeated pairs). n/a: no "
    "one-process run was trained for this seed."
)


def _process(p: dict[str, Any]) -> str:
    busy = "n/a" if p.get("busy") is None else f"{p['busy']:.2f}"
    wait = "n/a" if p.get("wait_s") is None else f"{p['wait_s']:.2f}"
    return f"{busy}, {wait}, {p.get('bytes_sent', 0) / 1e6:.0f}, {p.get('peak_rss_mib', 0):.0f}"


def samples_per_s(records: list[dict[str, Any]]) -> float | None:
    """Samples over the summed training windows of a run's epochs (None: nothing timed)."""
    wall = sum(float(r.get("train_wall_time_s") or 0.0) for r in records)
    samples = sum(int(r.get("samples") or 0) for r in records)
    return samples / wall if wall > 0 and samples > 0 else None


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
            rate = samples_per_s(records)
            one = samples_per_s(group.reference.get(seed, []))
            speedup = f"{rate / one:.2f}x" if rate and one else "n/a"
            schedule = f"{last.get('parallel', 'n/a')}: {last.get('schedule', 'n/a')}"
            cells = [f"{label}, seed {seed}", str(len(processes)), schedule]
            cells += [f"{rate:.0f}" if rate else "n/a", f"{one:.0f}" if one else "n/a", speedup]
            out.append((group.twin is None, [*cells, "; ".join(map(_process, processes))]))
    return out


def parallel_markdown(groups: dict[str, Group]) -> str:
    """A section for ``table.md``; empty when no run was parallel."""
    rows = parallel_rows(groups)
    if not rows:
        return ""
    table = md_table(PARALLEL_HEADERS, [c for _, c in rows])
    return f"\n## Parallel runs\n\n{table}\n{PARALLEL_NOTE}\n"
