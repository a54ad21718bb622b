"""Report figures (matplotlib, Agg backend: no display needed). Each returns PNG bytes or None."""

from __future__ import annotations

import io
from typing import Any

from bpfree.reporting.collect import Group
from bpfree.reporting.compute import trajectory
from bpfree.reporting.tables import Row
from bpfree.rules import baseline_rule


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def palette(labels: list[str]) -> dict[str, str]:
    """One colour per label, the same in every figure of a report (twins in shades of grey)."""
    cycle = _plt().rcParams["axes.prop_cycle"].by_key()["color"]
    greys = ["#555555", "#888888", "#aaaaaa", "#333333"]
    twin = baseline_rule() + "@"
    out: dict[str, str] = {}
    rules = [x for x in labels if not x.startswith(twin)]
    twins = [x for x in labels if x.startswith(twin)]
    for i, label in enumerate(rules):
        out[label] = cycle[i % len(cycle)]
    for i, label in enumerate(twins):
        out[label] = greys[i % len(greys)]
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (cost, accuracy) not dominated by a cheaper-or-equal, more-accurate one."""
    front, best = [], float("-inf")
    for cost, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((cost, acc))
            best = acc
    return front


def accuracy_vs_cost(
    rows: list[Row], attr: str, xlabel: str, colors: dict[str, str], scale: float = 1.0
) -> bytes | None:
    pts = [
        (getattr(r, attr) / scale, r.acc_mean, r.acc_std or 0.0, r.label)
        for r in rows
        if getattr(r, attr) is not None and r.acc_mean is not None
    ]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for x, y, err, label in pts:  # a legend, not labels beside the points: they never overlap
        ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, color=colors.get(label), label=label)
    front = pareto_front([(x, y) for x, y, _, _ in pts])
    ax.plot(
        [p[0] for p in front],
        [p[1] for p in front],
        "--",
        color="black",
        lw=1,
        label="Pareto front",
    )
    xs = [x for x, _, _, _ in pts]
    if min(xs) > 0 and max(xs) / min(xs) > 10:  # costs spanning decades: spread the cheap cluster
        from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        xlabel += " (log scale)"
    ax.margins(x=0.08)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy % (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return _png(fig)


def learning_curves(groups: dict[str, Group], colors: dict[str, str]) -> bytes | None:
    """Validation accuracy per epoch, and against cumulative training + selection seconds and
    FLOPs (the compute-budget view)."""
    if not any(g.history for g in groups.values()):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
    for g in groups.values():
        color = colors.get(g.label)
        for j, (seed, hist) in enumerate(sorted(g.history.items())):
            if not hist:
                continue
            n_train = g.runs.get(seed, {}).get("data", {}).get("n_train")
            pts = trajectory(hist, n_train)
            acc = [100 * p.val_accuracy for p in pts]
            kw = {"color": color, "alpha": 0.8, "label": g.label if j == 0 else None}
            axes[0].plot([p.epoch for p in pts], acc, **kw)
            if all(p.seconds is not None for p in pts):
                axes[1].plot([p.seconds for p in pts], acc, **kw)
            if all(p.flops is not None for p in pts):
                axes[2].plot([p.flops / 1e12 for p in pts], acc, **kw)  # type: ignore[operator]
    from matplotlib.ticker import MaxNLocator

    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("cumulative training + selection time (s)")
    axes[2].set_xlabel("cumulative training + selection FLOPs (x1e12)")
    axes[0].set_ylabel("validation accuracy %")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _png(fig)


def memory(rows: list[Row], colors: dict[str, str]) -> bytes | None:
    """State and activation memory of the probe steps, stacked, per row."""
    pts = [
        (r.label, r.state_bytes / 2**20, r.activation_bytes / 2**20)
        for r in rows
        if r.state_bytes is not None and r.activation_bytes is not None
    ]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(pts)))
    labels = [p[0] for p in pts]
    ax.barh(labels, [p[1] for p in pts], color="#cccccc", label="state")
    ax.barh(
        labels,
        [p[2] for p in pts],
        left=[p[1] for p in pts],
        color=[colors.get(label, "#dd8452") for label in labels],
        label="activations (one steady step)",
    )
    ax.set_xlabel("tensor memory of the probe steps (MiB)")
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8)
    return _png(fig)


def lr_sensitivity(grid: list[dict[str, Any]], colors: dict[str, str]) -> bytes | None:
    """Validation accuracy against the learning rate, per rule and twin (diverged: marked)."""
    if not grid:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for base in dict.fromkeys(g["base"] for g in grid):
        pts = sorted((g["lr"], g["val"], g["status"]) for g in grid if g["base"] == base)
        ok = [(lr, 100 * v) for lr, v, status in pts if status == "completed" and v is not None]
        (line,) = ax.plot(
            [p[0] for p in ok], [p[1] for p in ok], "o-", label=base, color=colors.get(base)
        )
        bad = [lr for lr, _, status in pts if status != "completed"]
        if bad:
            ax.plot(bad, [0.0] * len(bad), "x", color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale; x: diverged)")
    ax.set_ylabel("best validation accuracy %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def all_figures(
    rows: list[Row], groups: dict[str, Group], grid: list[dict[str, Any]] | None = None
) -> dict[str, bytes]:
    grid = grid or []
    c = palette([r.label for r in rows])
    figs = {
        "accuracy_vs_time": accuracy_vs_cost(rows, "train_time_s", "training time (s)", c),
        "accuracy_vs_energy": accuracy_vs_cost(rows, "energy_j", "measured energy (J)", c),
        "accuracy_vs_flops": accuracy_vs_cost(
            rows, "train_flops", "training FLOPs (x1e12)", c, 1e12
        ),
        "learning_curves": learning_curves(groups, c),
        "peak_memory": memory(rows, c),
        "lr_sensitivity": lr_sensitivity(grid, c),
    }
    return {k: v for k, v in figs.items() if v is not None}
