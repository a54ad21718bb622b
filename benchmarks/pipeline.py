"""Layer-parallel training: samples/s of a 2-stage pipeline against one process, in one run.

    python benchmarks/pipeline.py [--rules mf,bp,bp:pipeline_schedule=1f1b,dfa:pipeline_error=stale]
        [--model mlp_4x2000] [--stages 2]
        [--epochs 1] [--repeats 3] [--train-samples N] [--batch-size B] [--write FILE]

For each rule, the same configuration (Fashion-MNIST, full training set unless
``--train-samples``, the rule's default batch, one data pass) is trained through the public
API in one process with one torch thread, then over ``--stages`` processes with one thread
each (``OMP_NUM_THREADS``, set to 1 unless given: the issue's setting on a 2-core machine);
``--repeats`` such pairs, interleaved, so a slow spell of a shared machine hits both sides.
Samples per second are the trainer's own: samples / the training window's wall time (rank 0's
window, which ends when every stage has finished the epoch and the stages have exchanged their
parameters). Printed: medians and ranges, the median of the pairs' ratios, and for a middle
run each stage's busy fraction (CPU time of its main thread / wall), time waiting for input,
bytes sent and peak RSS, and the test accuracy (for a local rule the pipelined parameters equal
the single-process ones: ``tests/test_parallel.py`` checks them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from bpfree.config import TrainConfig
from bpfree.engine import run_config
from bpfree.engine.environment import describe
from bpfree.reporting.parallel import samples_per_s
from bpfree.settings import parse_value


def measure(settings: dict[str, Any], out: Path) -> dict[str, Any]:
    result = run_config(TrainConfig.build(settings), out, progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "samples_per_s": samples_per_s(records),  # as the report's Parallel runs section
        "train_wall_s": sum(r["train_wall_time_s"] for r in records),
        "test_accuracy": result.to_dict()["metrics"]["test_accuracy"],
        "processes": records[-1].get("processes"),
    }


def variant(base: dict[str, Any], spec: str, stages: int) -> tuple[dict, dict]:
    """The single-process and the pipelined settings of ``rule[:key=value...]``; the key
    ``pipeline_schedule`` (gpipe, 1f1b) is the trainer's, the others the rule's."""
    name, *items = spec.split(":")
    hparams, trainer = dict(base["hparams"]), {}
    for item in items:
        key, _, value = item.partition("=")
        if key == "pipeline_schedule":
            trainer[key] = value
        else:
            hparams[key] = parse_value(value)
    one = {**base, "rule": name, "hparams": hparams}
    return one, {**one, **trainer, "stages": stages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", default="mf,bp")
    ap.add_argument("--model", default="mlp_4x2000")
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--train-samples", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved pairs; medians")
    ap.add_argument("--batch-size", type=int, default=None, help="default: each rule's own")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--write", type=Path, default=None, help="also write the table here")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the workers' torch threads
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    lines = [
        f"# Pipelined training: {args.stages} stages against one process ({args.model})",
        "",
        f"Machine: {describe(torch.device('cpu'))['cpu']}, {os.cpu_count()} cores; "
        f"{torch.get_num_threads()} torch thread(s) per process; torch {torch.__version__}; "
        f"bpfree commit {describe(torch.device('cpu'))['git_sha']}.",
        f"Command: `python benchmarks/pipeline.py --rules {args.rules} "
        f"--model {args.model} --dataset {args.dataset} --stages {args.stages} "
        f"--epochs {args.epochs} --repeats {args.repeats}"
        + (f" --train-samples {args.train_samples}" if args.train_samples else "")
        + (f" --batch-size {args.batch_size}`" if args.batch_size else "`"),
        "",
        "| rule | processes | samples/s, median (range) | speedup, median of pairs (range) | "
        "test acc. | per stage (a middle run): busy, wait s, MB sent, peak RSS MiB |",
        "|---|---|---|---|---|---|",
    ]
    base: dict[str, Any] = {
        "dataset": args.dataset,
        "model": args.model,
        "epochs": args.epochs,
        "patience": args.epochs,
        "train_samples": args.train_samples,
        "hparams": {"batch_size": args.batch_size} if args.batch_size else {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for rule in args.rules.split(","):
            one, many = variant(base, rule, args.stages)
            ones, manys, ratios = [], [], []
            for rep in range(args.repeats):  # interleaved: a slow spell hits both sides
                where = Path(tmp) / f"{rule.replace(':', '_')}-{rep}"
                ones.append(measure(one, where / "1"))
                manys.append(measure(many, where / "k"))
                ratios.append(manys[-1]["samples_per_s"] / ones[-1]["samples_per_s"])
            for label, runs in (("1", ones), (str(args.stages), manys)):
                m = runs[len(runs) // 2] if len(runs) % 2 else runs[0]
                rates = sorted(r["samples_per_s"] for r in runs)
                stages = "; ".join(
                    f"{p['busy']:.2f}, {p['wait_s'] if p['wait_s'] is not None else 'n/a'}, "
                    f"{p['bytes_sent'] / 1e6:.0f}, {p['peak_rss_mib']:.0f}"
                    for p in (m["processes"] or [])
                )
                ratio = (
                    "1"
                    if label == "1"
                    else f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
                )
                lines.append(
                    f"| {rule} | {label} | {statistics.median(rates):.0f} "
                    f"({rates[0]:.0f}-{rates[-1]:.0f}) | {ratio} | "
                    f"{100 * m['test_accuracy']:.2f} | {stages or '-'} |"
                )
            print("\n".join(lines[-2:]), flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write is not None:
        args.write.write_text(text)


if __name__ == "__main__":
    main()
