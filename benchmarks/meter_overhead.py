"""What the meters cost: one training epoch with all meters on vs wall time only, interleaved.

    python benchmarks/meter_overhead.py --reps 6 --write benchmarks/results/meter_overhead.md

Runs bp on mlp_2x1000 for one epoch with meters on, off, and off again (an A/A control that shows
the machine's noise), in an order rotating every rep, all in this one process on one dataset.
Reports, per configuration, the timed training window (``train_wall_time``), the process CPU
time of the whole run, and the whole ``Trainer.run()`` call (which adds the probes, baselines
and evaluation), as medians of per-pair ratios and as ratios of the minima (noise from other
jobs only ever adds time, so the minimum is the steadiest estimate on a shared machine).

Because end-to-end ratios on a busy machine carry a few percent of noise, the meters' own work
is also timed directly: their start/stop per window (done outside the timed region, but part of
an epoch) and the per-phase probes (FLOPs, tensor memory), relative to the fastest epoch.
All runs do identical work (same seed, same data); the on and off metrics are checked equal.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bpfree.config import TrainConfig
from bpfree.engine import Trainer, build_rule, load_data
from bpfree.engine.environment import describe
from bpfree.meters.suite import MeterSuite
from bpfree.rules.base import Phase


def one_run(cfg: TrainConfig, data: Any) -> tuple[float, float, float, dict[str, Any]]:
    c0, t0 = time.process_time(), time.perf_counter()
    result = Trainer(cfg, progress=False, data=data).run()
    outer, cpu = time.perf_counter() - t0, time.process_time() - c0
    return result.cost["train_wall_time"]["value"], cpu, outer, result.metrics


def direct_costs(cfg: TrainConfig, data: Any, repeats: int = 200) -> tuple[float, float]:
    """(median start+stop cost of the non-timer meters per window, probe cost per phase), s."""
    suite = MeterSuite(cfg, torch.device("cpu"), data)
    extra = [m for m in suite.train if m.name not in ("train_wall_time", "train_cpu_time")]
    cycles = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for m in extra:
            m.start()
        for m in reversed(extra):
            m.stop()
        cycles.append(time.perf_counter() - t0)
    rule = build_rule(cfg, data)
    cost: dict[str, Any] = {}
    t0 = time.perf_counter()
    suite.before_phase(rule, 0, Phase("train"))
    suite.after_train(cost, rule, 0, first_epoch=True)
    suite.after_eval(cost, rule, 0, int(data.val_x.shape[0]))
    suite.after_eval(cost, rule, 0, int(data.test_x.shape[0]))
    return statistics.median(cycles), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument(
        "--train-samples",
        type=int,
        default=20000,
        help="first N training examples (0: the full set)",
    )
    ap.add_argument("--reps", type=int, default=6, help="reps of (on, off, control)")
    ap.add_argument("--write", help="Markdown file to write the result to")
    args = ap.parse_args()
    base = {
        "rule": "bp",
        "model": "mlp_2x1000",
        "dataset": args.dataset,
        "epochs": 1,
        "device": "cpu",
        "train_samples": args.train_samples or None,
    }
    configs = {flag: TrainConfig.build({**base, "meters": flag}) for flag in (True, False)}
    data = load_data(configs[True])
    one_run(configs[False], data)  # warm-up: allocator, kernels, page cache
    # Each rep runs: meters on, off, and off again (an A/A control showing the machine's noise),
    # in an order that rotates every rep.
    kinds = ("on", "off", "control")
    rows: list[dict[str, tuple[float, float, float]]] = []
    for i in range(args.reps):
        order = kinds[i % 3 :] + kinds[: i % 3]
        got = {k: one_run(configs[k == "on"], data) for k in order}
        assert got["on"][3] == got["off"][3], "meters changed the training result"
        rows.append({k: v[:3] for k, v in got.items()})
        print(
            f"rep {i + 1} ({'/'.join(order)}): "
            + ", ".join(
                f"{k} window {v[0]:.2f} s cpu {v[1]:.2f} s run {v[2]:.2f} s"
                for k, v in rows[-1].items()
            ),
            flush=True,
        )
    meter_s, probe_s = direct_costs(configs[True], data)

    def ratio(kind: str, k: int) -> tuple[float, float]:
        med = statistics.median(r[kind][k] / r["off"][k] for r in rows)
        return med, min(r[kind][k] for r in rows) / min(r["off"][k] for r in rows)

    epoch = min(r[k][0] for r in rows for k in kinds)
    env = describe(torch.device("cpu"))
    n_train = int(data.train_x.shape[0])
    measures = (
        ("timed training window", 0),
        ("process CPU time of the run", 1),
        ("whole `Trainer.run()`", 2),
    )
    lines = [
        "# Meter overhead",
        "",
        f"bp on mlp_2x1000, one epoch of {n_train} {args.dataset} training examples (batch 128),"
        f" CPU, all in one process after one warm-up run. {args.reps} reps, each running: all "
        "meters **on**, meters **off** (wall time only), and **off** again as an A/A *control* "
        "whose ratio to *off* shows the machine's own noise; the order rotates every rep. "
        "Command: `python benchmarks/meter_overhead.py "
        f"--train-samples {args.train_samples} --reps {args.reps}`.",
        "",
        "| rep | window on / off / control (s) | CPU on / off / control (s) "
        "| run on / off / control (s) |",
        "|---:|---|---|---|",
        *(
            f"| {i + 1} | "
            + " | ".join(" / ".join(f"{r[k][m]:.2f}" for k in kinds) for m in range(3))
            + " |"
            for i, r in enumerate(rows)
        ),
        "",
        "Ratios to *off* (median of per-rep ratios; ratio of the minima):",
        "",
        "| measure | on / off, median | on / off, minima | control / off, median "
        "| control / off, minima |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {name} | {ratio('on', k)[0]:.4f} | {ratio('on', k)[1]:.4f} "
            f"| {ratio('control', k)[0]:.4f} | {ratio('control', k)[1]:.4f} |"
            for name, k in measures
        ),
        "",
        "The meters' own work, timed directly (median of 200 start/stop cycles; one probe set):",
        "",
        f"- start + stop of the non-timer meters per window: {meter_s * 1e6:.0f} µs "
        f"= {100 * meter_s / epoch:.4f}% of the fastest epoch ({epoch:.2f} s); done outside "
        "the timed region (the timers start last and stop first); nothing of the meters runs "
        "inside the window here (the RSS peak comes from the kernel's high-water mark, RAPL "
        "and NVML are absent)",
        f"- per-phase probes (FLOPs of begin_phase, first, steady and partial steps; tensor "
        f"memory; predict on the validation and test batch sizes), outside every window: "
        f"{probe_s:.3f} s = {100 * probe_s / epoch:.2f}% of one epoch, once per phase "
        "(a smaller share of a run with more epochs)",
        "- metrics of *on* and *off* in every rep: identical (checked)",
        "",
        "Conclusion: the meters add "
        f"{100 * meter_s / epoch:.4f}% to an epoch (start/stop, outside the timed window; "
        "nothing of theirs runs inside it on this machine), and the probes add "
        f"{100 * probe_s / epoch:.2f}% of one epoch once per phase, outside every window. "
        "End-to-end ratios resolve the overhead only where the A/A control ratio is within a "
        f"few percent of 1; here it is {ratio('control', 0)[0]:.2f} (median) for the window.",
        "",
        "Environment: "
        + ", ".join(
            f"{k}={env[k]}"
            for k in ("bpfree", "git_sha", "python", "torch", "cpu", "cpu_count", "torch_threads")
        )
        + f"; load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
        "(the machine is shared with other jobs).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write).write_text(text)


if __name__ == "__main__":
    main()
