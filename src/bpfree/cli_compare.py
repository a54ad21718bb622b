"""The ``bpfree compare`` and ``bpfree report`` commands (thin: the logic is in this package).

Imports are deferred to the commands, so ``bpfree --help`` answers without loading torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bpfree.cli_sweep import quiet_optuna_logs
from bpfree.errors import BpfreeError, nonempty, shorten, split_commas


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "compare", help="each rule on its native network beside backprop on the same network"
    )
    p.add_argument(
        "--rules",
        required=True,
        help="comma-separated rules; a variant as rule:key=value (e.g. cafo:blocks=dfa)",
    )
    p.add_argument("--dataset", required=True)
    p.add_argument(
        "--seeds",
        default="3",
        help="how many seeds (0..N-1), a list like 0,5,9, or a range like 3-4 (2-2: seed 2)",
    )
    p.add_argument(
        "--out", type=nonempty, required=True, help="comparison directory (rerun to continue it)"
    )
    p.add_argument(
        "--epochs",
        type=int,
        help="budget of every run: data passes in total, summed over a rule's phases (30)",
    )
    p.add_argument("--train-samples", type=int, metavar="N")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="trainer setting (patience=3) or a rule's hyperparameter (mf.lr=1e-3)",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="RULE=MODEL",
        help="override a rule's native network (repeatable)",
    )
    p.add_argument(
        "--budget-flops", type=float, metavar="F", help="also stop every run at F training FLOPs"
    )
    p.add_argument(
        "--budget-seconds",
        type=float,
        metavar="S",
        help="also stop every run at S s of training time",
    )
    p.add_argument(
        "--twin",
        choices=["matched", "own"],
        default="matched",
        help="backprop twins take each rule's optimizer settings (matched, default) or "
        "backprop's own defaults (own)",
    )
    p.add_argument(
        "--lr-grid",
        metavar="LR,LR,...",
        help="also train every rule and twin at each step size (first seed, validation only) "
        "for a learning-rate sensitivity plot",
    )
    p.add_argument(
        "--one-process-reference",
        action="store_true",
        help="with --stages or --replicas: also train each parallel run of the first seed in "
        "one process (validation only), so the report states the speedup",
    )
    p.add_argument(
        "--only",
        metavar="LABELS",
        help="train only these rows' runs now (labels as in the report, e.g. "
        "cafo,bp@cnn_3block); the comparison is unchanged and a later call trains the rest",
    )
    p.add_argument("--data-dir", type=nonempty)
    p.add_argument("--device", help="auto (default), cpu or cuda")
    p.add_argument("--no-report", action="store_true", help="train only; no report at the end")
    finetune_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--tune",
        type=int,
        metavar="N",
        help="first tune every rule and every backprop twin with N Optuna trials each, under "
        "the same budget, and train the seeded runs with the best settings",
    )
    p.add_argument(
        "--tune-epochs", type=int, metavar="E", help="epoch cap per tuning trial (default --epochs)"
    )
    p.add_argument(
        "--tune-train-samples",
        type=int,
        metavar="N",
        help="training subset of the tuning trials (default --train-samples)",
    )
    p.add_argument(
        "--no-defaults-first",
        action="store_true",
        help="draw every tuning trial (by default trial 0 runs each rule's own settings, the "
        "defaults or the matched twin's, so tuning never ends below them on validation)",
    )
    p.add_argument(
        "--storage",
        type=nonempty,
        metavar="URL",
        help="share the tuning trials and seeded runs with every process running this same "
        "comparison through this storage (sqlite:///FILE or postgresql://...); without it "
        "the runs are local and tuning uses <out>/tuning.db",
    )
    r = sub.add_parser("report", help="tables, plots and report.html for a comparison directory")
    r.add_argument("dir", type=nonempty)
    r.add_argument("--no-plots", action="store_true", help="tables only")


def model_overrides(items: list[str]) -> dict[str, str]:
    """``--model RULE=MODEL`` options; a variant's label holds '=' itself (noprop:variant=ct),
    a model name never does, so the model is what follows the last '='."""
    models = {}
    for item in items:
        if "=" not in item:
            raise BpfreeError(f"--model expects RULE=MODEL, got {shorten(item)}")
        rule, model = item.rsplit("=", 1)
        models[rule.strip()] = model.strip()
    return models


def cmd_compare(args: argparse.Namespace) -> int:
    from bpfree.engine.interrupt import RunInterrupted

    models = model_overrides(args.model)
    lr_grid = None
    if args.lr_grid is not None:
        try:
            lr_grid = [float(v) for v in split_commas(args.lr_grid, "--lr-grid")]
        except ValueError:
            raise BpfreeError(
                f"--lr-grid expects numbers like 1e-4,1e-3,1e-2, got {args.lr_grid[:60]!r}"
            ) from None
    if args.tune is not None or args.storage:
        quiet_optuna_logs()
    try:
        result = _compare(args, models, lr_grid)
    except (RunInterrupted, KeyboardInterrupt):  # in a run, or between runs
        raise RunInterrupted(
            "comparison interrupted; run the same command again to continue it (finished runs "
            "are reused, the interrupted run resumes from its last checkpoint)"
        ) from None
    if not args.no_report:
        print((result.out / "report" / "table.md").read_text(), end="")
        print(f"report: {result.out / 'report' / 'report.html'}")
    return 0


def _compare(args: argparse.Namespace, models: dict[str, str], lr_grid: list[float] | None) -> Any:
    from bpfree.comparison import compare

    return compare(
        rules=args.rules,
        dataset=args.dataset,
        out=args.out,
        seeds=args.seeds,
        epochs=args.epochs,
        train_samples=args.train_samples,
        sets=[*args.set, *_ceiling_sets(args), *_finetune_sets(args)],
        models=models,
        data_dir=args.data_dir,
        device=args.device,
        report=not args.no_report,
        progress=False if args.quiet else None,
        tune=args.tune,
        tune_epochs=args.tune_epochs,
        tune_train_samples=args.tune_train_samples,
        budget={"defaults_first": False} if args.no_defaults_first else None,
        storage=args.storage,
        twin=args.twin,
        lr_grid=lr_grid,
        one_process_reference=args.one_process_reference,
        only=args.only,
    )


def _ceiling_sets(args: argparse.Namespace) -> list[str]:
    """--budget-flops / --budget-seconds as --set items (trainer settings of every run)."""
    pairs = (("budget_flops", args.budget_flops), ("budget_seconds", args.budget_seconds))
    return [f"{key}={value!r}" for key, value in pairs if value is not None]


def cmd_report(args: argparse.Namespace) -> int:
    from bpfree.reporting import write_report

    print(write_report(args.dir, plots=not args.no_plots), end="")
    print(f"report: {Path(args.dir) / 'report' / 'report.html'}")
    return 0


def finetune_arguments(p: argparse.ArgumentParser) -> None:
    """The fine-tuning, text and parallel options, shared by `train` and `compare`."""
    p.add_argument(
        "--init-from",
        type=nonempty,
        metavar="RUN_DIR",
        help="start the body from a finished run's weights (same model)",
    )
    p.add_argument(
        "--trainable",
        choices=("all", "head", "lora"),
        help="what trains: all parameters (default), the head on a frozen body, or LoRA",
    )
    p.add_argument(
        "--k-shot", type=int, metavar="K", help="K training examples per class (run seed draws)"
    )
    p.add_argument(
        "--max-length", type=int, metavar="L", help="text: tokens per example (default 128)"
    )
    p.add_argument(
        "--stages",
        type=int,
        metavar="K",
        help="split the network into K pipeline stages, one process each (default 1)",
    )
    p.add_argument(
        "--micro-batches",
        type=int,
        metavar="M",
        help="backprop pipeline: micro-batches per batch (default 4)",
    )
    p.add_argument(
        "--pipeline-schedule",
        choices=("gpipe", "1f1b"),
        help="backprop pipeline: GPipe (all forwards, then all backwards; default) or 1F1B "
        "(one forward, one backward: fewer micro-batches' activations held)",
    )
    p.add_argument(
        "--replicas",
        type=int,
        metavar="K",
        help="data parallel: K processes, each on a shard of every batch (default 1)",
    )


def finetune_settings(args: argparse.Namespace) -> dict[str, Any]:
    values = {
        "init_from": args.init_from,
        "trainable": args.trainable,
        "k_shot": args.k_shot,
        "max_length": args.max_length,
        "stages": args.stages,
        "micro_batches": args.micro_batches,
        "pipeline_schedule": args.pipeline_schedule,
        "replicas": args.replicas,
    }
    return {k: v for k, v in values.items() if v is not None}


def _finetune_sets(args: argparse.Namespace) -> list[str]:
    """The fine-tuning options as trainer settings, shared by every run and its twin."""
    return [f"{k}={v}" for k, v in finetune_settings(args).items()]
