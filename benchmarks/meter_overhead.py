"""What the meters cost: one training epoch with all meters on vs wall time only, interleaved.

    python benchmarks/meter_overhead.py --reps 7 --write benchmarks/results/meter_overhead.md

Runs bp on mlp_2x1000 for one epoch, alternating meters on / off (the order flips every pair so
slow drift of a shared machine cancels), all in this one process on one in-memory dataset.
Reports, per configuration, the timed training window (``train_wall_time``), the process CPU
time of the whole run, and the whole ``Trainer.run()`` call (which adds the probes, baselines
and evaluation), as medians of per-pair ratios and as ratios of the minima (noise from other
jobs only ever adds time, so the minimum is the steadiest estimate on a shared machine).

Because end-to-end ratios on a busy machine carry a few percent of noise, the meters' own work
is also timed directly: their start/stop per window (done outside the timed region, but part of
an epoch) and the per-phase probes (FLOPs, tensor memory), relative to the fastest epoch.
Both runs of a pair do identical work (same seed, same data); their metrics are checked equal.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bpfree.config import TrainConfig
from bpfree.data import load_dataset
from bpfree.engine import Trainer
from bpfree.engine.environment import describe
from bpfree.meters.suite import MeterSuite
from bpfree.models import create_model
from bpfree.rules import create_rule
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
    rule = create_rule(cfg.rule, cfg.hparams)
    rule.setup(
        create_model(cfg.model, data.input_shape),
        data.num_classes,
        torch.device("cpu"),
        torch.Generator().manual_seed(0),
    )
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
    ap.add_argument("--reps", type=int, default=7, help="pairs of runs (on, off)")
    ap.add_argument("--write", help="Markdown file to write the result to")
    args = ap.parse_args()
    device = torch.device("cpu")
    data = load_dataset(args.dataset, train_samples=args.train_samples or None, device=device)
    base = {
        "rule": "bp",
        "model": "mlp_2x1000",
        "dataset": args.dataset,
        "epochs": 1,
        "device": "cpu",
        "train_samples": args.train_samples or None,
    }
    configs = {flag: TrainConfig.build({**base, "meters": flag}) for flag in (True, False)}
    one_run(configs[False], data)  # warm-up: allocator, kernels, page cache
    rows = []
    for i in range(args.reps):
        order = (True, False) if i % 2 == 0 else (False, True)
        pair = {flag: one_run(configs[flag], data) for flag in order}
        assert pair[True][3] == pair[False][3], "meters changed the training result"
        rows.append((*pair[True][:3], *pair[False][:3]))
        a, b, c, d, e, f = rows[-1]
        print(
            f"pair {i + 1}: window {a:.3f}/{d:.3f} s, cpu {b:.3f}/{e:.3f} s, run {c:.3f}/{f:.3f} s",
            flush=True,
        )
    meter_s, probe_s = direct_costs(configs[True], data)

    def ratios(k: int) -> tuple[float, float]:
        med = statistics.median(r[k] / r[k + 3] for r in rows)
        return med, min(r[k] for r in rows) / min(r[k + 3] for r in rows)

    epoch = min(r[0] for r in rows)
    env = describe(device)
    n_train = int(data.train_x.shape[0])
    lines = [
        "# Meter overhead",
        "",
        f"bp on mlp_2x1000, one epoch of {n_train} {args.dataset} training examples (batch 128),"
        f" CPU; {args.reps} interleaved pairs of runs (all meters on / wall time only) in one "
        "process, after one warm-up run. Command: `python benchmarks/meter_overhead.py "
        f"--train-samples {args.train_samples} --reps {args.reps}`.",
        "",
        "| pair | window on (s) | window off (s) | CPU on (s) | CPU off (s) | run on (s) "
        "| run off (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {i + 1} | {a:.3f} | {d:.3f} | {b:.3f} | {e:.3f} | {c:.3f} | {f:.3f} |"
            for i, (a, b, c, d, e, f) in enumerate(rows)
        ),
        "",
        "Ratio meters on / off (median of per-pair ratios; ratio of the minima):",
        "",
        "| measure | median ratio | ratio of minima |",
        "|---|---:|---:|",
        *(
            f"| {name} | {ratios(k)[0]:.4f} | {ratios(k)[1]:.4f} |"
            for name, k in (
                ("timed training window", 0),
                ("process CPU time of the run", 1),
                ("whole `Trainer.run()`", 2),
            )
        ),
        "",
        "The meters' own work, timed directly (median of 200 start/stop cycles; one probe set):",
        "",
        f"- start + stop of the non-timer meters per window: {meter_s * 1e6:.0f} µs "
        f"= {100 * meter_s / epoch:.4f}% of the fastest epoch ({epoch:.2f} s); done outside "
        "the timed region (the timers start last and stop first)",
        f"- per-phase probes (FLOPs of begin_phase, first, steady and partial steps; tensor "
        f"memory; predict on the validation and test batch sizes), outside every window: "
        f"{probe_s:.3f} s = {100 * probe_s / epoch:.2f}% of one epoch, once per phase "
        "(a smaller share of a run with more epochs)",
        "- metrics of the two runs of every pair: identical (checked)",
        "",
        "Environment: "
        + ", ".join(
            f"{k}={env[k]}"
            for k in ("bpfree", "git_sha", "python", "torch", "cpu", "cpu_count", "torch_threads")
        ),
        "",
        "The machine is shared with other jobs (load average above its 2 cores during these "
        "runs); the spread between pairs shows that noise, which is far larger than the meters' "
        "own cost measured directly above.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write).write_text(text)


if __name__ == "__main__":
    main()
