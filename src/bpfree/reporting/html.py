"""``report.html``: one self-contained file (images embedded) a reader can trust."""

from __future__ import annotations

import base64
import html
from typing import Any

from bpfree.reporting.collect import Group
from bpfree.reporting.parallel import PARALLEL_HEADERS, PARALLEL_NOTE, parallel_rows
from bpfree.reporting.tables import (
    ACCURACY_HEADERS,
    COST_HEADERS,
    Row,
    accuracy_cells,
    cost_cells,
    statistics_note,
)

CAPTIONS = {
    "accuracy_vs_time": "Test accuracy against training wall time, with the Pareto front.",
    "accuracy_vs_energy": "Test accuracy against measured energy (hardware counters only).",
    "accuracy_vs_flops": "Test accuracy against counted training FLOPs.",
    "learning_curves": "Validation accuracy per epoch, and against cumulative training + "
    "selection time and FLOPs (comparisons at equal compute).",
    "peak_memory": "Tensor memory of the probe steps: the rule's persistent state (parameters, "
    "gradients, optimizer state, buffers) and the activations on top of it.",
    "lr_sensitivity": "Validation accuracy against the learning rate (one seed; the test set "
    "is not used).",
}

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:0.85em;margin:1em 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3} tr.twin td{color:#555} figure{margin:1.5em 0}
img{max-width:100%} code{background:#f3f3f3;padding:1px 3px}
p.smoke{background:#fff3cd;border:1px solid #e0c36c;padding:8px}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px} dt{font-weight:bold}
"""


def tuning_note(manifest: dict[str, Any]) -> str:
    """One line on how the settings were chosen (``compare.json``'s ``tuning`` record)."""
    t = manifest.get("tuning")
    if not t:
        return "not tuned: every rule ran with its default settings and --set values"
    b = t["budget"]
    pruner = "no pruner" if b["pruner"] == "none" else f"{b['pruner']} pruner"
    # (absent from comparisons made before the setting: their trial 0 was drawn too)
    first = ", trial 0 at each one's untuned settings" if b.get("defaults_first") else ""
    return (
        f"tuned: {t['trials']} trials each, same budget ({t['epochs']} data passes per trial, "
        f"train_samples={t['train_samples']}, TPE seed {b['sampler_seed']}, {pruner}{first}); "
        f"studies in {t['storage']}: "
        + "; ".join(
            f"{label} {s['study']} (best trial {s['best_trial']}: "
            + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in s["tuned"].items()
            )
            + ")"
            for label, s in t["studies"].items()
        )
    )


def twin_note(manifest: dict[str, Any]) -> str:
    """How the backprop twins were set up (``compare.json``'s ``twin_mode``)."""
    mode = manifest.get("twin_mode", "own")
    if manifest.get("tuning"):
        return f"{mode}, then tuned: each twin tuned by its own study under the same budget"
    if mode == "matched":
        return (
            "matched: each twin takes its rule's optimizer, lr, weight decay, momentum, batch "
            "size and lr schedule, so the two differ only in the gradient they follow"
        )
    note = "own: each twin with backprop's own defaults (not matched to its rule)"
    given = sorted(
        {
            f"{k}={v}"
            for e in manifest.get("entries", [])
            for k, v in e.get("twin_hparams", {}).items()
        }
    )
    return note + (f", but for {', '.join(given)} (--set bp.KEY=VALUE)" if given else "")


def _commits(shas: dict[str, int]) -> str:
    if not shas:
        return "unknown"
    text = ", ".join(f"{sha} ({n} runs)" for sha, n in sorted(shas.items()))
    dirty = sum(n for sha, n in shas.items() if sha.endswith("-dirty") or sha == "unknown")
    return text + (f"; WARNING: {dirty} runs not from a clean commit" if dirty else "")


def _provenance(
    manifest: dict[str, Any],
    env: dict[str, Any],
    groups: dict[str, Group],
    sources: dict[str, set[str]],
    shas: dict[str, int],
) -> str:
    cfg = manifest["runs"][0]["config"] if manifest["runs"] else {}
    budget = {
        k: cfg.get(k)
        for k in (
            "epochs",
            "budget_flops",
            "budget_seconds",
            "patience",
            "min_delta",
            "monitor",
            "val_fraction",
            "data_seed",
            "train_samples",
        )
    }
    items = {
        "dataset": manifest.get("dataset"),
        "seeds": ", ".join(map(str, manifest.get("seeds", []))),
        "budget (same for every run; epochs = data passes in total)": ", ".join(
            f"{k}={v}" for k, v in budget.items()
        ),
        "backprop twins": twin_note(manifest),
        "tuning": tuning_note(manifest),
        "hardware": f"{env.get('cpu')} ({env.get('cpu_count')} cores)"
        + (f", GPU {env['gpu']}" if env.get("gpu") else ""),
        "device": env.get("device"),
        "versions": f"bpfree {env.get('bpfree')}, torch {env.get('torch')}, "
        f"Python {env.get('python')}, numpy {env.get('numpy')}",
        "git SHA": _commits(shas),
        "runs": f"{sum(len(g.runs) for g in groups.values())} "
        f"({sum(len(g.completed()) for g in groups.values())} completed)",
    }
    rows = "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items.items()
    )
    measured = sorted(
        k
        for k, s in sources.items()
        if any(not x.startswith(("unavailable", "estimate")) for x in s)
    )
    estimated = sorted(k for k, s in sources.items() if any(x.startswith("estimate") for x in s))
    missing = {
        k: sorted(x for x in s if x.startswith("unavailable"))
        for k, s in sources.items()
        if all(x.startswith("unavailable") for x in s)
    }
    meas = "".join(
        f"<li><code>{html.escape(k)}</code>: {html.escape(', '.join(sorted(sources[k])))}</li>"
        for k in measured
    )
    est = ", ".join(f"<code>{html.escape(k)}</code>" for k in estimated) or "none"
    una = (
        "".join(
            f"<li><code>{html.escape(k)}</code>: {html.escape(', '.join(v))}</li>"
            for k, v in sorted(missing.items())
        )
        or "<li>none</li>"
    )
    return (
        f"<h2>Provenance</h2><dl>{rows}</dl><h3>Measured (with source)</h3><ul>{meas}</ul>"
        f"<h3>Estimated</h3><p>{est}</p><h3>Unavailable (with reason)</h3><ul>{una}</ul>"
    )


def render(
    manifest: dict[str, Any],
    env: dict[str, Any],
    groups: dict[str, Group],
    rows: list[Row],
    figures: dict[str, bytes],
    sources: dict[str, set[str]],
    shas: dict[str, int] | None = None,
    skipped: str | None = None,
    smoke: str | None = None,
) -> str:
    tables = "".join(
        _table(table_id, headers, [(r.is_twin, cells(r)) for r in rows])
        for table_id, headers, cells in (
            ("results", ACCURACY_HEADERS, accuracy_cells),
            ("costs", COST_HEADERS, cost_cells),
        )
    )
    parallel = parallel_rows(groups)
    if parallel:
        tables += (
            "<h2>Parallel runs</h2>"
            + _table("parallel", PARALLEL_HEADERS, parallel)
            + f"<p>{html.escape(PARALLEL_NOTE)}</p>"
        )
    figs = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}"><figcaption>{html.escape(CAPTIONS[name])}'
        "</figcaption></figure>"
        for name, png in figures.items()
    )
    no_figures = f"<p>{html.escape(skipped or 'none')}</p>"
    title = f"bpfree comparison — {manifest.get('dataset')}"
    note = (
        "Each rule is trained on its native network; backprop (<code>bp@model</code>) "
        "trains the same network with the same split, seeds, budget in data passes and "
        f"stopping rule. Twins: {html.escape(twin_note(manifest))}. "
        f"{html.escape(statistics_note(rows))} <code>n/a</code> means not measured, never zero."
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        + (f'<p class="smoke"><strong>{html.escape(smoke)}</strong></p>' if smoke else "")
        + f"<p>{note}</p>"
        f"{tables}"
        f"<h2>Figures</h2>{figs or no_figures}"
        f"{_provenance(manifest, env, groups, sources, shas or {})}</body></html>\n"
    )


def _table(table_id: str, headers: list[str], rows: list[tuple[bool, list[str]]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        f'<tr class="{"twin" if twin else "rule"}">'
        + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
        + "</tr>"
        for twin, cells in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
