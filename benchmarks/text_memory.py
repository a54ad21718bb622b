"""Fine-tuning memory on a real pretrained transformer, measured in one run.

For each setting (rule, trainable scope) on all-MiniLM-L6-v2 and SpamAssassin at one batch and
sequence length, the framework's own probe (``bpfree.meters.probe.probe_phase``: live tensor
storage while real training steps of a copy of the rule run) gives the training peak, the
persistent state and one step's activations, and the inference-only pass on a batch of the
same size (parameters, buffers, activations; no autograd). Prints a Markdown table and the
ratios the zeroth-order claim is about: a forward-only rule's peak over the inference pass,
and Adam fine-tuning's peak over it.

    python benchmarks/text_memory.py --batch 16 --max-length 128 \
        --write benchmarks/results/text_memory.md

Needs the `text` extra and the data (`make setup`, `make data`).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from bpfree.config import TrainConfig
from bpfree.engine.build import build_rule, load_data
from bpfree.meters.probe import probe_phase

SETTINGS = (
    ("bp", "all", {"optimizer": "adamw"}, "Adam fine-tuning (backprop)"),
    ("bp", "lora", {"optimizer": "adamw"}, "Adam LoRA (backprop)"),
    ("bp", "head", {"optimizer": "adamw"}, "linear probe (frozen body, Adam head)"),
    ("mezo", "all", {}, "MeZO (ZO-SGD), full"),
    ("mezo", "lora", {}, "MeZO (ZO-SGD), LoRA"),
    ("mezo", "all", {"variant": "adam"}, "ZO-Adam, full"),
    ("mezo", "lora", {"variant": "momentum"}, "ZO-SGD-MMT, LoRA"),
    ("mezo", "lora", {"variant": "sign"}, "ZO-SGD-Sign, LoRA"),
    ("mezo", "lora", {"variant": "conservative"}, "ZO-SGD-Cons, LoRA"),
    ("mezo", "lora", {"variant": "adam"}, "ZO-Adam, LoRA"),
    ("fg", "all", {"optimizer": "sgd"}, "forward gradient (1 tangent, SGD), full"),
    ("fg", "lora", {"optimizer": "sgd"}, "forward gradient (1 tangent, SGD), LoRA"),
)
MIB = 2**20


def measure(batch: int, max_length: int, k_shot: int) -> list[dict[str, object]]:
    rows = []
    data = None
    for rule, trainable, hparams, label in SETTINGS:
        config = TrainConfig.build(
            {
                "rule": rule,
                "dataset": "spam_assassin",
                "model": "minilm_l6",
                "device": "cpu",
                "k_shot": k_shot,
                "max_length": max_length,
                "trainable": trainable,
                "hparams": {"batch_size": batch, **hparams},
            }
        )
        data = data if data is not None else load_data(config)
        built = build_rule(config, data)
        t0 = time.perf_counter()
        probe = probe_phase(built, data, torch.device("cpu"), built.phases()[0])
        if isinstance(probe, str):
            raise SystemExit(f"{label}: {probe}")
        rows.append(
            {
                "label": label,
                "rule": rule,
                "trainable": trainable,
                "passes": built.forward_passes(),
                "trainable_params": sum(
                    p.numel() for p in built.modules.parameters() if p.requires_grad
                ),
                "peak": probe.peak_bytes,
                "state": probe.state_bytes,
                "activations": probe.activation_bytes,
                "inference": probe.inference_bytes,
                "probe_s": time.perf_counter() - t0,
            }
        )
        print(f"{label}: peak {probe.peak_bytes / MIB:.1f} MiB", file=sys.stderr)
    assert data is not None
    rows.append({"sequence_length": data.input_shape[1]})
    return rows


def table(rows: list[dict[str, object]], batch: int, max_length: int) -> str:
    *runs, meta = rows
    zo = next(r for r in runs if r["rule"] == "mezo" and r["trainable"] == "all")
    adam = next(r for r in runs if r["rule"] == "bp" and r["trainable"] == "all")
    lines = [
        f"Batch {batch}, sequence length {meta['sequence_length']} (max_length {max_length}), "
        f"all-MiniLM-L6-v2 (22.7 M parameters) on SpamAssassin; torch {torch.__version__}, "
        f"{platform.machine()}, one thread. Live tensor storage measured by bpfree's probe "
        "(TorchDispatchMode) on real training steps; the inference pass is `predict` on a "
        "batch of the same size without autograd.",
        "",
        "| setting | trainable params | forward passes / step | peak MiB | state MiB "
        "| activations MiB | peak / inference pass |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        ratio = float(r["peak"]) / float(r["inference"])  # type: ignore[arg-type]
        lines.append(
            f"| {r['label']} | {r['trainable_params']:,} | {r['passes']} "
            f"| {float(r['peak']) / MIB:.1f} | {float(r['state']) / MIB:.1f} "  # type: ignore[arg-type]
            f"| {float(r['activations']) / MIB:.1f} | {ratio:.2f} |"  # type: ignore[arg-type]
        )
    inference = float(zo["inference"]) / MIB  # type: ignore[arg-type]
    lines += [
        "",
        f"Inference-only pass: {inference:.1f} MiB. MeZO full peak / inference pass: "
        f"{float(zo['peak']) / float(zo['inference']):.2f} (the claim: <= 1.2). "  # type: ignore[arg-type]
        f"Adam fine-tuning peak / MeZO peak: {float(adam['peak']) / float(zo['peak']):.2f} "  # type: ignore[arg-type]
        "(the claim: >= 3).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--k-shot", type=int, default=64)
    parser.add_argument("--write", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    text = table(measure(args.batch, args.max_length, args.k_shot), args.batch, args.max_length)
    print(text, end="")
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        command = " ".join(["python", "benchmarks/text_memory.py", *sys.argv[1:]])
        args.write.write_text(f"# Fine-tuning memory\n\nRegenerate: `{command}`\n\n{text}")


if __name__ == "__main__":
    main()
