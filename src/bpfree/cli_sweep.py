"""The ``bpfree sweep`` and ``bpfree worker`` commands (thin: the logic is in this package)."""

from __future__ import annotations

import argparse
from typing import Any

from bpfree.errors import nonempty


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("sweep", help="tune a rule with Optuna under a fixed, stored budget")
    p.add_argument(
        "--study", type=nonempty, required=True, help="study name (created if it does not exist)"
    )
    p.add_argument(
        "--storage",
        type=nonempty,
        metavar="URL",
        help="sqlite:///FILE, a file path, or postgresql://USER:PASS@HOST/DB "
        "(default $BPFREE_STORAGE, else ./bpfree-sweeps.db)",
    )
    p.add_argument("--rule", help="learning rule to tune")
    p.add_argument("--model", help="model (default: the rule's native network for the dataset)")
    p.add_argument("--dataset", help="dataset (see `bpfree list`)")
    p.add_argument(
        "--config", type=nonempty, metavar="FILE.toml", help="base settings file; flags override it"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a fixed (untuned) rule hyperparameter or trainer setting (repeatable)",
    )
    p.add_argument("--trials", type=int, help="finished (complete + pruned) trials, exactly")
    p.add_argument("--epochs", type=int, help="epoch cap per trial (default 30)")
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs (default 5)")
    p.add_argument("--seed", type=int, help="run seed of every trial (default 0)")
    p.add_argument("--train-samples", type=int, metavar="N", help="tune on the first N examples")
    p.add_argument("--device", help="auto (default), cpu or cuda")
    p.add_argument("--sampler-seed", type=int, help="TPE's own seed (default 0)")
    p.add_argument("--pruner", choices=["median", "none"], help="per-epoch pruning (median)")
    p.add_argument(
        "--no-defaults-first",
        action="store_true",
        help="draw every trial (by default trial 0 runs the base settings, the rule's defaults)",
    )
    p.add_argument(
        "--max-failed",
        type=int,
        metavar="N",
        help="give up after N failed trials (default: the number of trials)",
    )
    p.add_argument(
        "--heartbeat-interval",
        type=int,
        metavar="S",
        help="seconds between a running trial's heartbeats (default 15)",
    )
    p.add_argument(
        "--grace-period",
        type=int,
        metavar="S",
        help="a trial silent this long is failed and retried (default 60)",
    )
    p.add_argument("--status", action="store_true", help="only print the study's state")
    _worker_flags(p)
    p.add_argument(
        "--export",
        type=nonempty,
        metavar="FILE.toml",
        help="write the best settings for `bpfree train --config FILE.toml`",
    )
    w = sub.add_parser("worker", help="join a running sweep and run its trials until it is done")
    w.add_argument("--study", type=nonempty, required=True, help="name of an existing study")
    w.add_argument("--storage", type=nonempty, metavar="URL", help="as for `bpfree sweep`")
    _worker_flags(w)


def _worker_flags(p: Any) -> None:
    p.add_argument("--data-dir", type=nonempty, help="folder holding dataset files on this machine")
    p.add_argument(
        "--max-trials",
        type=int,
        metavar="K",
        help="leave after K trials here (0: only create or check the study)",
    )
    p.add_argument("--quiet", action="store_true", help="no per-trial lines")


def _trial_line(trial: Any) -> str:
    cost = trial.user_attrs.get("cost") or {}
    took = f" in {cost['trial_wall_time_s']:.1f} s" if cost else ""
    params = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
    )
    state = trial.state.name
    if state == "COMPLETE":
        what = f"{trial.value:.4f}"
    elif state == "PRUNED":
        what = f"after epoch {trial.user_attrs.get('epochs')}"
    else:
        what = f"({trial.user_attrs.get('reason', 'failed')})"
    return f"trial {trial.number}: {state} {what}{took}  [{params}]"


def _run_worker(args: argparse.Namespace, spec: Any) -> int:
    from bpfree.sweeps import Worker, summarize

    def on_trial(trial: Any) -> None:
        if not args.quiet:
            print(_trial_line(trial), flush=True)

    if args.max_trials == 0:  # create (or check) only
        from bpfree.sweeps.storage import redact

        where = f" --storage {redact(args.storage)}" if args.storage else ""
        print(
            f"study {spec.name} is ready; start workers with: "
            f"bpfree worker --study {spec.name}{where}"
        )
    else:
        report = Worker(spec, on_trial=on_trial).work(args.max_trials)
        print(f"this worker ran {len(report.trials)} trials ({report.status})")
    summary = summarize(spec.name, spec.storage)
    print(summary.format())
    if getattr(args, "export", None):
        from bpfree.sweeps import export_best

        print(f"best settings written to {export_best(spec.name, spec.storage, args.export)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from bpfree.config import apply_sets, load_toml
    from bpfree.sweeps import create_or_join, export_best, summarize

    quiet_optuna_logs()
    if args.status:
        print(summarize(args.study, args.storage).format())
        if args.export:
            print(f"best settings written to {export_best(args.study, args.storage, args.export)}")
        return 0
    base: dict[str, Any] = load_toml(args.config) if args.config else {}
    flags = {
        "rule": args.rule,
        "model": args.model,
        "dataset": args.dataset,
        "epochs": args.epochs,
        "seed": args.seed,
        "patience": args.patience,
        "train_samples": args.train_samples,
        "data_dir": args.data_dir,
        "device": args.device,
    }
    base.update({k: v for k, v in flags.items() if v is not None})
    if args.set:
        base = apply_sets(base, args.set)
    budget = {
        "n_trials": args.trials,
        "sampler_seed": args.sampler_seed,
        "pruner": args.pruner,
        "max_failed_trials": args.max_failed,
        "heartbeat_interval_s": args.heartbeat_interval,
        "grace_period_s": args.grace_period,
        "defaults_first": False if args.no_defaults_first else None,
    }
    spec = create_or_join(
        args.study,
        args.storage,
        base=base,
        budget={k: v for k, v in budget.items() if v is not None},
    )
    return _run_worker(args, spec)


def cmd_worker(args: argparse.Namespace) -> int:
    from bpfree.sweeps import create_or_join

    quiet_optuna_logs()
    base = {"data_dir": args.data_dir} if args.data_dir else None
    return _run_worker(args, create_or_join(args.study, args.storage, base=base))


def quiet_optuna_logs() -> None:
    # bpfree prints one line per trial; Optuna's own INFO/WARNING lines would repeat them.
    from bpfree.sweeps.storage import import_optuna

    import_optuna().logging.set_verbosity(import_optuna().logging.ERROR)
