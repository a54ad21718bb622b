"""What the meters cost: one training epoch with all meters on vs wall time only, interleaved.

    python benchmarks/meter_overhead.py --reps 7 --write benchmarks/results/meter_overhead.md

Runs bp on mlp_2x1000 for one epoch, alternating meters on / off (the order flips every pair so
slow drift of a shared machine cancels), all in this one process on one in-memory dataset.
Reports the median ratio (on / off) of

* the timed training window (``train_wall_time``): what the meters add inside the window, and
* the whole ``Trainer.run()`` call: also the probes, baselines and peak lookup between windows.

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


def one_run(cfg: TrainConfig, data: Any) -> tuple[float, float, dict[str, Any]]:
    t0 = time.perf_counter()
    result = Trainer(cfg, progress=False, data=data).run()
    outer = time.perf_counter() - t0
    return result.cost["train_wall_time"]["value"], outer, result.metrics


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
        assert pair[True][2] == pair[False][2], "meters changed the training result"
        rows.append((pair[True][0], pair[False][0], pair[True][1], pair[False][1]))
        print(
            f"pair {i + 1}: window on {rows[-1][0]:.3f} s / off {rows[-1][1]:.3f} s; "
            f"run on {rows[-1][2]:.3f} s / off {rows[-1][3]:.3f} s",
            flush=True,
        )
    window = statistics.median(a / b for a, b, _, _ in rows)
    outer = statistics.median(c / d for _, _, c, d in rows)
    env = describe(device)
    n_train = int(data.train_x.shape[0])
    lines = [
        "# Meter overhead",
        "",
        f"bp on mlp_2x1000, one epoch of {n_train} {args.dataset} training examples (batch 128),"
        f" CPU; {args.reps} interleaved pairs of runs (meters on / wall time only) in one "
        "process, after one warm-up run. Ratios are medians of the per-pair ratios.",
        "",
        "| pair | window on (s) | window off (s) | run on (s) | run off (s) |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {i + 1} | {a:.3f} | {b:.3f} | {c:.3f} | {d:.3f} |"
            for i, (a, b, c, d) in enumerate(rows)
        ),
        "",
        f"- **timed training window, meters on / off: {window:.4f}** ({100 * (window - 1):+.2f}%)",
        f"- whole `Trainer.run()` (adds the probes, baselines and evaluation): {outer:.4f} "
        f"({100 * (outer - 1):+.2f}%)",
        "- metrics of the two runs of every pair: identical (checked)",
        "",
        "Environment: "
        + ", ".join(
            f"{k}={env[k]}"
            for k in ("bpfree", "git_sha", "python", "torch", "cpu", "cpu_count", "torch_threads")
        ),
        "",
        "The machine is shared with other jobs; the spread between pairs shows its noise.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write).write_text(text)


if __name__ == "__main__":
    main()
