"""The comparison tables: accuracy with its statistics, and what each row cost.

Two tables share one row per label (a rule variant or a backprop twin):

* accuracy: runs (completed / diverged / not finished), test accuracy, the paired difference to
  the twin with its 95% t-interval and the n, df and t quantile it rests on, the TOST
  equivalence verdict within ±0.5 pp, parameters and the rule's properties;
* cost: data passes and optimizer steps consumed, training and selection (validation) time and
  FLOPs, measured energy with its source, the probe's state and activation memory, and the data
  passes, seconds and FLOPs to reach 99% of the twin's best validation accuracy.

Unmeasured values print as ``n/a``, never 0. Energy shows measured counters only (GPU NVML,
else CPU RAPL), with its source; estimates are never mixed into this column.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import statistics
from dataclasses import dataclass
from typing import Any

from bpfree.reporting.collect import Group
from bpfree.reporting.compute import TARGET_FRACTION, ToTarget, run_target, to_target
from bpfree.reporting.stats import TOST_MARGIN_PP, mean_std, paired_ci, tost

NA = "n/a"


@dataclass
class Row:
    label: str
    model: str
    is_twin: bool
    twin: str  # the label of the row's backprop twin ("" for a twin)
    completed: int
    diverged: int
    unfinished: int
    acc_mean: float | None
    acc_std: float | None
    diff: float | None
    diff_low: float | None
    diff_high: float | None
    pairs: int  # seeds where the rule and its twin both completed
    df: int | None
    t: float | None
    tost: str  # equivalent / not equivalent / inconclusive ("" for a twin)
    data_passes: float | None
    steps: float | None
    train_time_s: float | None
    selection_time_s: float | None
    train_flops: float | None
    selection_flops: float | None
    energy_j: float | None
    energy_source: str
    state_bytes: float | None
    activation_bytes: float | None
    target: ToTarget
    params: int | None
    reverse_ad: str
    backward_locking: str
    weight_transport: str
    not_converged: bool = False  # mean test accuracy within 10 points of chance

    @property
    def n(self) -> int:
        return self.completed


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


def _metric_mean(group: Group, name: str) -> float | None:
    values = list(group.values(name).values())
    return statistics.fmean(values) if values else None


CHANCE_MARGIN_PP = 10.0  # a row this close to chance is flagged "not converged at this budget"


def build_rows(groups: dict[str, Group], chance_pct: float | None = None) -> list[Row]:
    """One row per label; with ``chance_pct`` (100 / classes), rows whose mean test accuracy
    is within 10 points of chance are flagged as not converged at this budget."""
    rows = [_row(g, groups) for g in groups.values()]
    if chance_pct is not None:
        for r in rows:
            r.not_converged = r.acc_mean is not None and r.acc_mean < chance_pct + CHANCE_MARGIN_PP
    return rows


def _row(g: Group, groups: dict[str, Group]) -> Row:
    acc = g.values("test_accuracy")
    mean, std = mean_std([100 * v for v in acc.values()])
    ci, verdict, pairs = None, "", 0
    if g.twin is not None:
        twin = groups[g.twin].values("test_accuracy")
        seeds = sorted(set(acc) & set(twin))
        pairs = len(seeds)
        if seeds:
            a, b = [100 * acc[s] for s in seeds], [100 * twin[s] for s in seeds]
            ci, verdict = paired_ci(a, b), tost(a, b)
    info = next(iter(g.completed().values()), {}).get("rule_info", {})
    energy, source = _energy(g)
    params = [r["metrics"].get("num_parameters") for r in g.completed().values()]
    done, diverged, unfinished = g.counts()

    def yn(key: str) -> str:
        return NA if key not in info else ("yes" if info[key] else "no")

    return Row(
        label=g.label,
        model=g.model,
        is_twin=g.twin is None,
        twin=g.twin or "",
        completed=done,
        diverged=diverged,
        unfinished=unfinished,
        acc_mean=mean,
        acc_std=std,
        diff=ci.mean if ci else None,
        diff_low=ci.low if ci else None,
        diff_high=ci.high if ci else None,
        pairs=pairs,
        df=ci.df if ci else None,
        t=ci.t if ci else None,
        tost=verdict,
        data_passes=_metric_mean(g, "data_passes"),
        steps=_metric_mean(g, "optimizer_steps"),
        train_time_s=_mean_measured(g.cost("train_wall_time"))[0],
        selection_time_s=_mean_measured(g.cost("selection_wall_time"))[0],
        train_flops=_mean_measured(g.cost("train_flops"))[0],
        selection_flops=_mean_measured(g.cost("selection_flops"))[0],
        energy_j=energy,
        energy_source=source,
        state_bytes=_mean_measured(g.cost("state_memory"))[0],
        activation_bytes=_mean_measured(g.cost("activation_memory"))[0],
        target=to_target(g, groups),
        params=params[0] if params else None,
        reverse_ad=info.get("reverse_ad", NA),
        backward_locking=yn("backward_locking"),
        weight_transport=yn("weight_transport"),
    )


def _si(v: float | None, unit: str) -> str:
    if v is None:
        return NA
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= factor:
            return f"{v / factor:.3g} {prefix}{unit}"
    return f"{v:.3g} {unit}"


def _mib(v: float | None) -> str:
    return NA if v is None else f"{v / 2**20:.1f} MiB"


def _f(v: float | None, fmt: str, suffix: str = "") -> str:
    return NA if v is None else format(v, fmt) + suffix


ACCURACY_HEADERS = [
    "rule",
    "model",
    "twin (Δ against)",
    "runs (ok / diverged / unfinished)",
    "test acc % (mean ± std)",
    "Δ vs twin (pp) [95% CI]",
    "n, df, t",
    f"TOST ±{TOST_MARGIN_PP:g} pp",
    "params",
    "reverse AD",
    "backward locking",
    "weight transport",
]
COST_HEADERS = [
    "rule",
    "data passes",
    "optimizer steps",
    "train time",
    "selection time",
    "train FLOPs",
    "selection FLOPs",
    "energy (source)",
    "state mem (probe)",
    "activation mem (probe)",
    f"to {100 * TARGET_FRACTION:g}% of twin's best val: passes / time / FLOPs (reached)",
]
HEADERS = ACCURACY_HEADERS  # the first table, for readers of one header list


def accuracy_cells(row: Row) -> list[str]:
    acc = NA
    if row.acc_mean is not None:
        acc = f"{row.acc_mean:.2f}" + (f" ± {row.acc_std:.2f}" if row.acc_std is not None else "")
        if row.not_converged:
            acc += " (not converged at this budget)"
    stats = NA
    if row.is_twin:
        diff, stats, verdict = "(baseline)", "", ""
    elif row.diff is None:
        diff, verdict = NA, NA
    elif row.diff_low is None:
        diff, verdict = f"{row.diff:+.2f} [n/a: 1 pair]", row.tost
        stats = "n=1"
    else:
        diff = f"{row.diff:+.2f} [{row.diff_low:+.2f}, {row.diff_high:+.2f}]"
        stats, verdict = f"n={row.pairs}, df={row.df}, t={row.t:.2f}", row.tost
    return [
        row.label,
        row.model,
        row.twin or "(is a twin)",
        f"{row.completed} / {row.diverged} / {row.unfinished}",
        acc,
        diff,
        stats,
        verdict,
        NA if row.params is None else f"{row.params:,}",
        row.reverse_ad,
        row.backward_locking,
        row.weight_transport,
    ]


def cost_cells(row: Row) -> list[str]:
    energy = NA if row.energy_j is None else f"{_si(row.energy_j, 'J')} ({row.energy_source})"
    t = row.target
    reach = f"({t.reached}/{t.runs})"
    if t.reached:
        secs = _f(t.seconds, ".3g", " s")
        reach = f"{t.passes:.1f} / {secs} / {_si(t.flops, 'FLOP')} {reach}"
    return [
        row.label,
        _f(row.data_passes, ".2f"),
        _f(row.steps, ",.0f"),
        _f(row.train_time_s, ".3g", " s"),
        _f(row.selection_time_s, ".3g", " s"),
        _si(row.train_flops, "FLOP"),
        _si(row.selection_flops, "FLOP"),
        energy,
        _mib(row.state_bytes),
        _mib(row.activation_bytes),
        reach,
    ]


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def statistics_note(rows: list[Row]) -> str:
    """How to read the Δ and TOST columns."""
    return (
        "Δ: mean paired difference in test accuracy to the backprop twin over the seeds where "
        "both completed (n pairs, df = n - 1, t = the 0.975 quantile of Student's t with df "
        f"degrees of freedom). TOST: two one-sided tests at α = 0.05 with a ±{TOST_MARGIN_PP:g} "
        "pp margin (equivalent: the 90% interval lies inside the margin; not equivalent: wholly "
        "outside it; else inconclusive). A 95% interval containing 0 is not evidence of a "
        "match. Diverged and unfinished runs are counted in the runs column and left out of "
        "means and pairs."
    )


def markdown(rows: list[Row]) -> str:
    acc = md_table(ACCURACY_HEADERS, [accuracy_cells(r) for r in rows])
    cost = md_table(COST_HEADERS, [cost_cells(r) for r in rows])
    return f"{acc}\n{statistics_note(rows)}\n\n{cost}"


def csv_text(rows: list[Row]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    fields = [f.name for f in dataclasses.fields(Row) if f.name != "target"]
    target = ["target_reached", "target_runs", "target_passes", "target_seconds", "target_flops"]
    w.writerow(fields + target)
    for r in rows:
        t = r.target
        w.writerow(
            [getattr(r, f) for f in fields] + [t.reached, t.runs, t.passes, t.seconds, t.flops]
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
            ("α", r"$\alpha$"),
        ):
            s = s.replace(a, b)
        return s

    out = []
    for headers, cells in ((ACCURACY_HEADERS, accuracy_cells), (COST_HEADERS, cost_cells)):
        out += [r"\begin{tabular}{" + "l" * len(headers) + "}", r"\hline"]
        out += [" & ".join(esc(h) for h in headers) + r" \\", r"\hline"]
        out += [" & ".join(esc(c) for c in cells(r)) + r" \\" for r in rows]
        out += [r"\hline", r"\end{tabular}", ""]
    return "\n".join(out)


RUN_FIELDS = [
    "label",
    "seed",
    "status",
    "test_accuracy",
    "val_accuracy",
    "best_epoch",
    "data_passes",
    "optimizer_steps",
    "stopped_by",
    "train_wall_time_s",
    "selection_wall_time_s",
    "train_flops",
    "selection_flops",
    "target_epoch",
    "target_passes",
    "target_seconds",
    "target_flops",
]


def runs_csv(groups: dict[str, Group]) -> str:
    """One line per run: what it reached, what it consumed, and what reaching 99% of its
    twin's best validation accuracy cost it (empty: never reached)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(RUN_FIELDS)
    for g in groups.values():
        for seed, r in sorted(g.runs.items()):
            m, cost = r.get("metrics", {}), r.get("cost", {})
            hit = run_target(g, groups, seed) if r.get("status") == "completed" else None

            def value(name: str, cost: dict[str, Any] = cost) -> Any:
                return cost.get(name, {}).get("value")

            w.writerow(
                [
                    g.label,
                    seed,
                    r.get("status"),
                    m.get("test_accuracy"),
                    m.get("val_accuracy"),
                    m.get("best_epoch"),
                    m.get("data_passes"),
                    m.get("optimizer_steps"),
                    m.get("stopped_by"),
                    value("train_wall_time"),
                    value("selection_wall_time"),
                    value("train_flops"),
                    value("selection_flops"),
                    *(
                        (hit.epoch, hit.passes, hit.seconds, hit.flops)
                        if hit is not None
                        else (None, None, None, None)
                    ),
                ]
            )
    return buf.getvalue().replace(",None", ",")
