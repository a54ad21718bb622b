"""Training throughput of bp and mf on mlp_2x1000: samples/s and achieved FLOP/s vs matmul peak.

    python benchmarks/throughput.py [--dataset fashion_mnist] [--reps 3] [--quick]

In one invocation: measures the machine's float32 matmul peak (large square matmuls, best of
several), counts one training step's FLOPs per rule with torch's FlopCounterMode (on a copy of
the rule, so training is untouched), then times full training epochs through the trainer's own
epoch loop after one untimed warm-up epoch each, interleaving the rules and taking medians (the
machine is shared and noisy).
Targets from the foundation issue: backprop >= 60% of the measured peak; Mono-Forward's epoch
time <= 0.9x backprop's.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bpfree.config import TrainConfig
from bpfree.engine import build_rule, load_data
from bpfree.engine.environment import describe
from bpfree.engine.loop import train_epoch
from bpfree.engine.seeding import generator
from bpfree.rules import Batch


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    """Best-of-`reps` FLOP/s of an n x n float32 matmul (2 n^3 FLOPs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def step_flops(rule, batch: Batch) -> int:
    probe = copy.deepcopy(rule)
    with FlopCounterMode(display=False) as counter:
        probe.train_step(batch)
    return counter.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--model", default="mlp_2x1000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a 3,000-example slice, 1 repetition")
    args = ap.parse_args()
    samples = 3000 if args.quick else None
    reps = 1 if args.quick else args.reps
    base = {"model": args.model, "dataset": args.dataset, "train_samples": samples}
    configs = {
        name: TrainConfig.build({**base, "rule": name, "device": "cpu"}) for name in ("bp", "mf")
    }
    data = load_data(configs["bp"])
    n = data.train_x.shape[0]
    rules = {}
    for name, config in configs.items():
        rule = build_rule(config, data)
        bs = rule.hp.batch_size
        idx = torch.arange(bs)
        flops = step_flops(rule, Batch(data.train_x[idx], data.train_y[idx], idx))
        # FLOPs scale with the batch: a last partial batch costs its share.
        rules[name] = (rule, flops * n / bs, [])
    for rule, _, _ in rules.values():  # untimed warm-up epoch (allocator, thread pool, caches)
        rule.train()
        train_epoch(rule, data, generator(1, "warmup"), rule.hp.batch_size, torch.device("cpu"))
    peaks = [matmul_peak()]
    for _ in range(reps):
        for rule, _, times in rules.values():
            rule.train()
            t0 = time.perf_counter()
            train_epoch(
                rule, data, generator(0, "batches"), rule.hp.batch_size, torch.device("cpu")
            )
            times.append(time.perf_counter() - t0)
        peaks.append(matmul_peak())
    peak = max(peaks)
    env = describe()
    print(f"# Throughput on {args.model} / {args.dataset} ({n} training examples per epoch)")
    print(
        f"Hardware: {env['cpu']}, {env['cpu_count']} cores, {env['torch_threads']} torch "
        f"threads; torch {env['torch']}; {reps} interleaved repetitions, medians."
    )
    print(f"Measured float32 matmul peak (2048^3, best of runs): {peak / 1e9:.1f} GFLOP/s")
    print()
    print("| rule | epoch s | samples/s | train GFLOP/epoch | achieved GFLOP/s | of peak |")
    print("|---|---|---|---|---|---|")
    med = {}
    for name, (_, flops, times) in rules.items():
        t = statistics.median(times)
        med[name] = t
        print(
            f"| {name} | {t:.2f} | {n / t:.0f} | {flops / 1e9:.1f} | {flops / t / 1e9:.1f} | "
            f"{100 * flops / t / peak:.0f}% |"
        )
    print()
    print(f"mf epoch time / bp epoch time: {med['mf'] / med['bp']:.2f}")


if __name__ == "__main__":
    main()
