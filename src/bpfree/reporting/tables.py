"""The comparison table: accuracy, the paired difference to backprop, costs and properties.

Unmeasured values print as ``n/a``, never 0. Energy shows measured counters only (GPU NVML,
else CPU RAPL), with its source; estimates are never mixed into this column.
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass
from typing import Any

from bpfree.reporting.collect import Group
from bpfree.reporting.stats import mean_std, paired_ci

NA = "n/a"


@dataclass
class Row:
    label: str
    model: str
    is_twin: bool
    n: int
    acc_mean: float | None
    acc_std: float | None
    diff: float | None
    diff_low: float | None
    diff_high: float | None
    train_time_s: float | None
    energy_j: float | None
    energy_source: str
    peak_tensor_bytes: float | None
    train_flops: float | None
    params: int | None
    reverse_ad: str
    backward_locking: str
    weight_transport: str


def _mean_measured(readings: dict[int, dict[str, Any]]) -> tuple[float | None, str]:
    vals = [
        r["value"]
        for r in readings.values()
        if r.get("value") is not None and not str(r["source"]).startswith("estimate")
    ]
    sources = sorted({str(r["source"]) for r in readings.values()})
    if not vals or len(vals) != len(readings):
        return None, ", ".join(sources) or "unavailable"
    return statistics.fmean(vals), ", ".join(sources)


def _energy(group: Group) -> tuple[float | None, str]:
    for name in ("gpu_energy", "cpu_energy"):
        value, source = _mean_measured(group.cost(name))
        if value is not None:
            return value, source
    reasons = sorted(
        {str(r["source"]) for n in ("gpu_energy", "cpu_energy") for r in group.cost(n).values()}
    )
    return None, ", ".join(reasons) or "unavailable"


def build_rows(groups: dict[str, Group]) -> list[Row]:
    rows = []
    for g in groups.values():
        acc = g.values("test_accuracy")
        mean, std = mean_std([100 * v for v in acc.values()])
        diff = low = high = None
        if g.twin is not None:
            twin = groups[g.twin].values("test_accuracy")
            seeds = sorted(set(acc) & set(twin))
            if seeds:
                ci = paired_ci([100 * acc[s] for s in seeds], [100 * twin[s] for s in seeds])
                diff, low, high = ci.mean, ci.low, ci.high
        info = next(iter(g.completed().values()), {}).get("rule_info", {})
        energy, source = _energy(g)
        params = [r["metrics"].get("num_parameters") for r in g.completed().values()]

        def yn(key: str, info: dict[str, Any] = info) -> str:
            return NA if key not in info else ("yes" if info[key] else "no")

        rows.append(
            Row(
                label=g.label,
                model=g.model,
                is_twin=g.twin is None,
                n=len(acc),
                acc_mean=mean,
                acc_std=std,
                diff=diff,
                diff_low=low,
                diff_high=high,
                train_time_s=_mean_measured(g.cost("train_wall_time"))[0],
                energy_j=energy,
                energy_source=source,
                peak_tensor_bytes=_mean_measured(g.cost("peak_tensor_memory"))[0],
                train_flops=_mean_measured(g.cost("train_flops"))[0],
                params=params[0] if params else None,
                reverse_ad=info.get("reverse_ad", NA),
                backward_locking=yn("backward_locking"),
                weight_transport=yn("weight_transport"),
            )
        )
    return rows


def _f(v: float | None, fmt: str) -> str:
    return NA if v is None else format(v, fmt)


def _si(v: float | None, unit: str) -> str:
    if v is None:
        return NA
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= factor:
            return f"{v / factor:.3g} {prefix}{unit}"
    return f"{v:.3g} {unit}"


HEADERS = [
    "rule",
    "model",
    "seeds",
    "test acc % (mean ± std)",
    "Δ vs BP (pp) [95% CI]",
    "train time",
    "energy (source)",
    "peak tensor mem",
    "train FLOPs",
    "params",
    "reverse AD",
    "backward locking",
    "weight transport",
]


def cells(row: Row) -> list[str]:
    acc = (
        NA
        if row.acc_mean is None
        else (f"{row.acc_mean:.2f}" + (f" ± {row.acc_std:.2f}" if row.acc_std is not None else ""))
    )
    if row.is_twin:
        diff = "(baseline)"
    elif row.diff is None:
        diff = NA
    elif row.diff_low is None:
        diff = f"{row.diff:+.2f} [n/a: 1 seed]"
    else:
        diff = f"{row.diff:+.2f} [{row.diff_low:+.2f}, {row.diff_high:+.2f}]"
    energy = NA if row.energy_j is None else f"{_si(row.energy_j, 'J')} ({row.energy_source})"
    mem = NA if row.peak_tensor_bytes is None else f"{row.peak_tensor_bytes / 2**20:.1f} MiB"
    return [
        row.label,
        row.model,
        str(row.n),
        acc,
        diff,
        NA if row.train_time_s is None else f"{row.train_time_s:.1f} s",
        energy,
        mem,
        _si(row.train_flops, "FLOP"),
        NA if row.params is None else f"{row.params:,}",
        row.reverse_ad,
        row.backward_locking,
        row.weight_transport,
    ]


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_text(rows: list[Row]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "rule",
            "model",
            "seeds",
            "test_acc_mean_pct",
            "test_acc_std_pct",
            "diff_vs_bp_pp",
            "diff_ci_low",
            "diff_ci_high",
            "train_time_s",
            "energy_j",
            "energy_source",
            "peak_tensor_bytes",
            "train_flops",
            "params",
            "reverse_ad",
            "backward_locking",
            "weight_transport",
        ]
    )
    for r in rows:
        w.writerow(
            [
                r.label,
                r.model,
                r.n,
                r.acc_mean,
                r.acc_std,
                r.diff,
                r.diff_low,
                r.diff_high,
                r.train_time_s,
                r.energy_j,
                r.energy_source,
                r.peak_tensor_bytes,
                r.train_flops,
                r.params,
                r.reverse_ad,
                r.backward_locking,
                r.weight_transport,
            ]
        )
    return buf.getvalue().replace(",None", ",")  # empty cells for unmeasured values


def latex(rows: list[Row]) -> str:
    def esc(s: str) -> str:
        for a, b in (
            ("\\", r"\textbackslash{}"),
            ("_", r"\_"),
            ("%", r"\%"),
            ("&", r"\&"),
            ("#", r"\#"),
            ("±", r"$\pm$"),
            ("Δ", r"$\Delta$"),
        ):
            s = s.replace(a, b)
        return s

    cols = "l" * len(HEADERS)
    out = [
        r"\begin{tabular}{" + cols + "}",
        r"\hline",
        " & ".join(esc(h) for h in HEADERS) + r" \\",
        r"\hline",
    ]
    out += [" & ".join(esc(c) for c in cells(r)) + r" \\" for r in rows]
    out += [r"\hline", r"\end{tabular}"]
    return "\n".join(out) + "\n"
