"""Peak activation memory of every rule against depth and against batch size, in one run.

    python benchmarks/memory_scaling.py --write benchmarks/results/memory_scaling.md

Activation memory is what a training step holds on top of the rule's persistent state: the peak
bytes of the tensor storage a steady training step of a copy of the rule creates and frees
again (``bpfree.meters.probe``: TorchDispatchMode; activations and temporaries, not the
step's input batch, which is data and the same for every rule, nor the gradients and optimizer
state the step leaves behind). It is counted in bytes,
not timed, so it does not depend on the machine's load. For a multi-phase rule the largest
phase is reported.

* depth: ``mlp_<D>x1000`` for D = 2, 4, 8, 16, batch 2048, every rule that trains MLPs;
* batch: 256 .. 8192 on ``mlp_4x2000`` for the MLP rules; rules that train no MLP on their own
  native network (``cnn_3block`` for CaFo, ``noprop_dt`` for NoProp), with backprop beside each.

The ratios the acceptance asks for are printed at the end: backprop's growth from depth 2 to 16
against the local rules', and each rule's activation memory against backprop's at the largest
batch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from bpfree.config import TrainConfig
from bpfree.engine import build_rule, load_data
from bpfree.engine.environment import describe
from bpfree.meters.probe import PhaseProbe, probe_phase
from bpfree.rules import RULES, baseline_rule

MIB = 2**20


def activation_bytes(rule: str, model: str, batch: int, dataset: str) -> tuple[int, int]:
    """(activation bytes, state bytes) of the rule's largest phase on a ``batch``-row set."""
    config = TrainConfig.build(
        {
            "rule": rule,
            "model": model,
            "dataset": dataset,
            "device": "cpu",
            "train_samples": max(batch + batch // 8, 64),  # one full batch after validation
            "hparams": {"batch_size": batch},
            "epochs": 60,  # enough passes for every phase of every rule
        }
    )
    data = load_data(config)
    data.train_x, data.train_y = data.train_x[:batch], data.train_y[:batch]  # exactly one batch
    built = build_rule(config, data)
    best = (0, 0)
    for phase in built.phases():
        probe = probe_phase(built, data, torch.device("cpu"), phase)
        if not isinstance(probe, PhaseProbe):
            raise RuntimeError(f"{rule} on {model}: {probe}")
        best = max(best, (probe.activation_bytes, probe.state_bytes))
        built.start_phase(phase, data.train_x, data.train_y)  # the next phase starts from here
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--depths", default="2,4,8,16")
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--depth-batch", type=int, default=2048)
    ap.add_argument("--batches", default="256,512,1024,2048,4096,8192")
    ap.add_argument("--batch-model", default="mlp_4x2000")
    ap.add_argument("--quick", action="store_true", help="tiny sizes on digits (a smoke test)")
    ap.add_argument("--write", help="Markdown file for the tables (a PNG is written beside it)")
    ap.add_argument("--rules", help="only these rules (comma-separated; backprop is always in)")
    args = ap.parse_args()
    if args.quick:
        args.dataset, args.depths, args.width = "digits", "2,4", 64
        args.depth_batch, args.batches, args.batch_model = 256, "128,256", "mlp_2x64"
    depths = [int(d) for d in args.depths.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    bp = baseline_rule()
    chosen = {bp, *args.rules.split(",")} if args.rules else set(RULES.names())
    for name in chosen:
        RULES.get(name)  # an unknown name: an error with suggestions
    mlp_rules = [r for r, cls in RULES.items() if "mlp" in cls.info.families and r in chosen]
    cnn_only = [r for r, cls in RULES.items() if "mlp" not in cls.info.families and r in chosen]
    depth: dict[str, list[int]] = {}
    for rule in mlp_rules:
        depth[rule] = []
        for d in depths:
            act, _ = activation_bytes(rule, f"mlp_{d}x{args.width}", args.depth_batch, args.dataset)
            depth[rule].append(act)
            print(f"depth {d:>2} {rule:<5} {act / MIB:9.1f} MiB", file=sys.stderr, flush=True)
    batch: dict[str, list[int]] = {}
    # rules that train no MLP run on their own native network, with backprop beside each
    others = [(r, RULES.get(r).info.native_model("grayscale")) for r in cnn_only]
    twins = [(bp, m) for m in dict.fromkeys(m for _, m in others)]
    for rule, model in [(r, args.batch_model) for r in mlp_rules] + others + twins:
        label = rule if model == args.batch_model else f"{rule}@{model}"
        batch[label] = []
        for b in batches:
            act, _ = activation_bytes(rule, model, b, args.dataset)
            batch[label].append(act)
            print(f"batch {b:>5} {label:<14} {act / MIB:9.1f} MiB", file=sys.stderr, flush=True)
    text = report(args, depths, batches, depth, batch, bp)
    print(text)
    if args.write:
        Path(args.write).write_text(text)
        plot(Path(args.write).with_suffix(".png"), args, depths, batches, depth, batch)
    return 0


def report(
    args: argparse.Namespace,
    depths: list[int],
    batches: list[int],
    depth: dict[str, list[int]],
    batch: dict[str, list[int]],
    bp: str,
) -> str:
    env = describe()
    lines = [
        "# Activation memory against depth and batch size",
        "",
        f"`python benchmarks/memory_scaling.py --write ...` on {env['cpu']} "
        f"({env['cpu_count']} cores), torch {env['torch']}, bpfree {env['bpfree']} "
        f"(git {env['git_sha']}); dataset {args.dataset}. Activation memory = the peak bytes of "
        "the tensors one steady training step of a copy of the rule creates and frees again "
        "(a probe, counted in bytes, not timed).",
        "",
        f"## Against depth (mlp_<D>x{args.width}, batch {args.depth_batch}), MiB",
        "",
        "| rule | " + " | ".join(f"D={d}" for d in depths) + f" | D={depths[-1]} / D={depths[0]} |",
        "|---|" + "---|" * (len(depths) + 1),
    ]
    for rule, vals in depth.items():
        cells = " | ".join(f"{v / MIB:.1f}" for v in vals)
        lines.append(f"| {rule} | {cells} | {vals[-1] / vals[0]:.2f}x |")
    lines += [
        "",
        f"## Against batch ({args.batch_model}; CNN-only rules on their native CNN), MiB",
        "",
        "| rule | " + " | ".join(f"B={b}" for b in batches) + f" | / {bp} at B={batches[-1]} |",
        "|---|" + "---|" * (len(batches) + 1),
    ]
    for label, vals in batch.items():
        ref = batch.get(bp if "@" not in label else f"{bp}@{label.split('@', 1)[1]}")
        ratio = f"{vals[-1] / ref[-1]:.2f}x" if ref else "n/a"
        cells = " | ".join(f"{v / MIB:.1f}" for v in vals)
        lines.append(f"| {label} | {cells} | {ratio} |")
    lines += ["", "Ratios asked for:", ""]
    for rule in depth:
        lines.append(
            f"- {rule}: depth {depths[0]} -> {depths[-1]}: {depth[rule][-1] / depth[rule][0]:.2f}x"
        )
    for rule in batch:
        if "@" not in rule and rule != bp:
            lines.append(
                f"- {rule} / {bp} at batch {batches[-1]}: {batch[rule][-1] / batch[bp][-1]:.2f}x"
            )
    return "\n".join(lines) + "\n"


def plot(
    path: Path,
    args: argparse.Namespace,
    depths: list[int],
    batches: list[int],
    depth: dict[str, list[int]],
    batch: dict[str, list[int]],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for rule, vals in depth.items():
        a.plot(depths, [v / MIB for v in vals], "o-", label=rule)
    for label, vals in batch.items():
        b.plot(batches, [v / MIB for v in vals], "o-", label=label)
    a.set_xlabel(f"hidden layers (width {args.width}, batch {args.depth_batch})")
    b.set_xlabel(f"batch size ({args.batch_model})")
    b.set_xscale("log", base=2)
    for ax in (a, b):
        ax.set_ylabel("activation memory (MiB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    raise SystemExit(main())
