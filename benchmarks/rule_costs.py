"""Each rule's training cost as a ratio to backprop on the same network, in one invocation.

    python benchmarks/rule_costs.py --dataset fashion_mnist --train-samples 5000 \
        --write benchmarks/results/rule_costs_fashion_mnist.md

For every rule spec (``cafo+dfa`` is cafo with ``blocks=dfa``) and for bp on the same model:

* time per epoch: the trainer's timed training window (meters off, so nothing else runs in the
  process), ``--epochs`` epochs per phase on the first ``--train-samples`` training images;
  the first epoch of a phase includes its ``begin_phase`` work (CaFo's BN pass and feature
  cache), so first and later epochs are shown apart;
* FLOPs per sample: ``bpfree.meters.flops.count_flops`` (torch's FlopCounterMode with formulas
  for hand-written updates) around one steady training step, divided by the batch size, per
  phase; the one-off ``begin_phase`` work is shown per training sample beside it.

Ratios divide the rule's figure by bp's on the same model, both measured here, in this process.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import bpfree
import bpfree.rules
from bpfree.config import TrainConfig
from bpfree.engine import Trainer, build_rule, load_data
from bpfree.engine.environment import describe
from bpfree.meters.flops import count_flops
from bpfree.rules import Batch

DEFAULT_PAIRS = "dfa=mlp_2x1000,mf=mlp_2x1000,ff=mlp_3x1000,cafo=cnn_3block,cafo+dfa=cnn_3block"


def flops_per_phase(
    rule_name: str, model: str, hp: dict[str, Any], data: bpfree.data.DataBundle
) -> list[tuple[str, float, float]]:
    """(phase, one-off FLOPs per training sample, FLOPs per sample of a steady step)."""
    config = TrainConfig.build(
        {"rule": rule_name, "model": model, "dataset": data.spec.name, "hparams": hp}
    )
    rule = build_rule(config, data, torch.device("cpu"))
    n, b = data.train_x.shape[0], rule.hp.batch_size
    out = []
    for phase in rule.phases():
        rule.train()
        with count_flops() as setup:
            rule.start_phase(phase, data.train_x, data.train_y)
        steady = None
        for step in range(2):  # the second step is steady (a first step may do one-off work)
            idx = torch.arange(step * b, (step + 1) * b) % n
            with count_flops() as c:
                rule.train_step(Batch(data.train_x[idx], data.train_y[idx], idx))
            steady = c
        assert steady is not None
        out.append((phase.name, setup.total / n, steady.total / b))
    return out


def time_per_epoch(
    rule_name: str,
    model: str,
    hp: dict[str, Any],
    args: argparse.Namespace,
    data: bpfree.data.DataBundle,
) -> list[dict[str, Any]]:
    """The training-window wall time of every epoch (history records), meters off."""
    cfg = TrainConfig.build(
        dict(
            rule=rule_name,
            model=model,
            dataset=args.dataset,
            epochs=args.epochs,
            patience=args.epochs + 1,
            train_samples=args.train_samples,
            hparams=hp,
            meters=False,
        )
    )
    history: list[dict[str, Any]] = []
    Trainer(cfg, progress=False, data=data, on_epoch=history.append, evaluate_test=False).run()
    return history


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", default=DEFAULT_PAIRS, help="rule_spec=model, comma separated")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--train-samples", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per phase to time")
    ap.add_argument(
        "--set", action="append", default=["cafo+dfa:blocks=dfa"], help="rule_spec:key=value"
    )
    ap.add_argument("--write", help="Markdown file to write the table to")
    args = ap.parse_args()
    pairs = [p.split("=") for p in args.pairs.split(",") if p]
    data = load_data(
        TrainConfig.build(
            {"rule": "bp", "dataset": args.dataset, "train_samples": args.train_samples}
        ),
        torch.device("cpu"),
    )
    rows, bp_cache = [], {}
    t_start = time.time()
    for spec, model in pairs:
        if model not in bp_cache:
            hist = time_per_epoch("bp", model, {}, args, data)
            flops = flops_per_phase("bp", model, {}, data)
            bp_cache[model] = (statistics.mean(h["train_wall_time_s"] for h in hist), flops[0][2])
            rows.append(("bp", model, {}, hist, flops))
        rule = spec.split("+")[0]
        hp = {}
        for item in args.set:
            r, kv = item.split(":", 1)
            if r == spec:
                k, v = kv.split("=", 1)
                hp[k] = bpfree.rules.parse_value(v)
        rows.append(
            (
                spec,
                model,
                hp,
                time_per_epoch(rule, model, hp, args, data),
                flops_per_phase(rule, model, hp, data),
            )
        )
        print(f"{spec} on {model}: done ({time.time() - t_start:.0f} s)", flush=True)

    env = describe()
    lines = [
        f"# Training cost per rule, as ratios to backprop on the same network ({args.dataset})",
        "",
        f"Generated by `benchmarks/rule_costs.py` on {time.strftime('%Y-%m-%d')}, one invocation. "
        f"Hardware: {env['cpu']}, {env['cpu_count']} cores, {env['torch_threads']} torch threads "
        f"(shared machine: other jobs ran beside it, so times are indicative); Python "
        f"{env['python']}, torch {env['torch']}, bpfree {env['bpfree']} ({env['git_sha']}).",
        f"First {args.train_samples} training images (10% held out for validation), "
        f"{args.epochs} epochs per phase, default hyperparameters unless listed. Time: the "
        "trainer's training window (meters off). FLOPs: count_flops (FlopCounterMode, 2 per "
        "multiply-add) on one steady training step / batch size; one-off = begin_phase FLOPs / "
        "training samples (CaFo's BN pass and feature cache), spent once per phase.",
        "",
        "| rule | model | settings | phase | s/epoch (first) | s/epoch (later) | "
        "time ratio to bp | step FLOPs/sample | one-off FLOPs/sample | FLOPs ratio to bp | "
        "first-epoch FLOPs ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for spec, model, hp, hist, flops in rows:
        bp_time, bp_flops = bp_cache[model]
        for phase, oneoff, step in flops:
            eps = [h for h in hist if h["phase"] == phase]
            first = eps[0]["train_wall_time_s"] if eps else float("nan")
            later = [h["train_wall_time_s"] for h in eps[1:]]
            later_s = statistics.mean(later) if later else float("nan")
            mean_s = statistics.mean(h["train_wall_time_s"] for h in eps) if eps else float("nan")
            lines.append(
                f"| {spec} | {model} | {hp or 'defaults'} | {phase} | {first:.2f} | "
                f"{later_s:.2f} | {mean_s / bp_time:.2f} | {step:.3g} | {oneoff:.3g} | "
                f"{step / bp_flops:.3g} | {(step + oneoff) / bp_flops:.3g} |"
            )
    lines += [
        "",
        "Time ratio: the phase's mean s/epoch over the timed epochs / bp's mean s/epoch on the "
        "same model. FLOPs ratio: the phase's steady step FLOPs per sample / bp's; first-epoch "
        "FLOPs ratio adds the phase's one-off work per sample (its first epoch's cost). Inference "
        "FLOPs are not included (FF's goodness inference runs C = 10 forward passes per sample).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        Path(args.write).write_text(text)


if __name__ == "__main__":
    main()
