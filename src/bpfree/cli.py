"""The ``bpfree`` command: a thin layer over the public API (no logic of its own).

User mistakes (bad names, bad values, missing data) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bpfree.cli_compare import add_parsers as add_compare_parsers
from bpfree.cli_compare import cmd_compare, cmd_report, finetune_arguments, finetune_settings
from bpfree.cli_sweep import add_parsers as add_sweep_parsers
from bpfree.cli_sweep import cmd_sweep, cmd_worker
from bpfree.errors import BpfreeError, nonempty, one_line
from bpfree.signals import sigterm_as_interrupt


def _train_parser(sub: Any) -> None:
    p = sub.add_parser("train", help="train one rule on one model and dataset")
    p.add_argument("--rule", help="learning rule (see `bpfree list`)")
    p.add_argument(
        "--model", help="model (default: the rule's native network for the dataset; `bpfree list`)"
    )
    p.add_argument("--dataset", help="dataset (see `bpfree list`)")
    p.add_argument(
        "--config", type=nonempty, metavar="FILE.toml", help="settings file; flags override it"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a rule hyperparameter or trainer setting (repeatable)",
    )
    p.add_argument(
        "--epochs", type=int, help="data passes in total, summed over the rule's phases (30)"
    )
    p.add_argument("--budget-flops", type=float, metavar="F", help="also stop at F training FLOPs")
    p.add_argument(
        "--budget-seconds", type=float, metavar="S", help="also stop at S s of training time"
    )
    p.add_argument("--seed", type=int, help="run seed (default 0)")
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs (default 5)")
    p.add_argument(
        "--train-samples", type=int, metavar="N", help="use only the first N training examples"
    )
    p.add_argument("--data-dir", type=nonempty, help="folder holding dataset files")
    p.add_argument("--device", help="auto (default), cpu or cuda")
    p.add_argument(
        "--out",
        type=nonempty,
        help="run directory (default runs/<rule>-<model>-<dataset>-s<seed>-<time>)",
    )
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--grid-intensity",
        type=float,
        metavar="G",
        help="grid carbon intensity in gCO2e/kWh for `carbon` (default: --country, "
        "else the world average 475)",
    )
    p.add_argument(
        "--country",
        type=nonempty,
        metavar="CODE",
        help="country code (e.g. FRA or FR) whose grid intensity to use for `carbon`",
    )
    finetune_arguments(p)


def _cmd_train(args: argparse.Namespace) -> int:
    from bpfree.config import TrainConfig, apply_sets, load_toml
    from bpfree.engine import run_config

    values: dict[str, Any] = load_toml(args.config) if args.config else {}
    flags = {
        "rule": args.rule,
        "model": args.model,
        "dataset": args.dataset,
        "epochs": args.epochs,
        "budget_flops": args.budget_flops,
        "budget_seconds": args.budget_seconds,
        "seed": args.seed,
        "patience": args.patience,
        "train_samples": args.train_samples,
        "data_dir": args.data_dir,
        "device": args.device,
        "grid_intensity": args.grid_intensity,
        "country": args.country,
        **finetune_settings(args),
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    config = TrainConfig.build(apply_sets(values, args.set))
    out = args.out
    if out is None:
        if args.resume:
            raise BpfreeError("--resume needs --out (the run directory to continue)")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = f"runs/{config.rule}-{config.model}-{config.dataset}-s{config.seed}-{stamp}"
    held = [Path(out) / name for name in ("checkpoint.pt", "result.json")]
    if args.resume and not any(path.exists() for path in held):
        raise BpfreeError(
            f"nothing to resume in {out} (no checkpoint.pt or result.json); "
            "drop --resume to start a new run there"
        )
    result = run_config(config, out, resume=args.resume, progress=False if args.quiet else None)
    print(result.summary())
    return 0 if result.status == "completed" else 1


def _flag(value: bool) -> str:
    return str(value).lower()


def _properties(info: Any) -> str:
    native = ", ".join(
        f"{'any' if kind == '*' else kind} -> {model}" for kind, model in info.native.items()
    )
    if info.native_by is not None:
        key, by_value = info.native_by
        native += "".join(f", {key}={v} -> {m}" for v, m in by_value.items())
    return (
        f"reverse_ad={info.reverse_ad}, backward_locking={_flag(info.backward_locking)}, "
        f"weight_transport={_flag(info.weight_transport)}, "
        f"forward_passes_per_step={info.forward_passes_per_step}, "
        f"models: {', '.join(info.families)}; native: {native}"
    )


def _cmd_list(args: argparse.Namespace) -> int:
    from bpfree.answers import cached_answer

    # Cached per version of the code: building it imports torch (bpfree.answers says why).
    print(cached_answer(f"list {args.rule or ''}", lambda: _listing(args.rule)), end="")
    return 0


def _listing(rule: str | None) -> str:
    from bpfree.data import DATASETS
    from bpfree.models import MODELS
    from bpfree.rules import RULES

    if rule:
        return _rule_card(RULES.get(rule))
    lines = [
        "Rules (reverse-mode AD / backward locking / weight transport / forward passes per step;"
        " native network per dataset kind):"
    ]
    for name, cls in RULES.items():
        lines.append(f"  {name:<6} {cls.info.title}")
        lines.append(f"         {_properties(cls.info)}")
        lines.append(f"         {cls.info.citation}")
    lines.append("Models:")
    for pattern in MODELS.patterns():
        examples = ", ".join(pattern.examples)
        lines.append(f"  {pattern.display:<20} " + (f"e.g. {examples}" if examples else ""))
    for name, entry in MODELS.items():
        lines.append(f"  {name:<20} {entry.description}")
    lines.append("Datasets:")
    for name, spec in DATASETS.items():
        classes = f"{spec.num_classes} classes" if spec.num_classes else "classes from its files"
        shape = "token ids (--max-length)" if spec.is_text else str(spec.input_shape)
        lines.append(f"  {name:<14} {spec.title}, {classes}, input {shape}, kind {spec.kind}")
    return "\n".join(lines) + "\n"


def _rule_card(cls: Any) -> str:
    """A rule's card: properties, then every hyperparameter with its default (and choices)."""
    i = cls.info
    lines = [f"{i.name}: {i.title} ({i.citation})", f"  {_properties(i)}"]
    lines.append(
        f"Hyperparameters (set with --set key=value; in a comparison --set {i.name}.key=value):"
    )
    hints = typing.get_type_hints(cls.Hparams)
    for f in dataclasses.fields(cls.Hparams):
        hint = hints[f.name]
        if typing.get_origin(hint) is typing.Literal:
            kind = "one of " + ", ".join(str(c) for c in typing.get_args(hint))
        else:
            kind = getattr(hint, "__name__", str(hint))
        lines.append(f"  {f.name:<18} {f.default!s:<14} {kind}")
    return "\n".join(lines) + "\n"


def _cmd_data(args: argparse.Namespace) -> int:
    from bpfree.data import DATASETS, fetch, locate
    from bpfree.data.catalog import fetch_command, missing_message

    if args.data_cmd == "fetch":
        spec = DATASETS.get(args.name)
        if not (0 < args.timeout < float("inf") and 0 < args.deadline < float("inf")):
            raise BpfreeError("--timeout and --deadline must be positive numbers of seconds")
        folder = fetch(
            spec, args.data_dir, mirror=args.mirror, timeout=args.timeout, deadline=args.deadline
        )
        print(f"{spec.name}: files verified (SHA-256) in {folder}")
        return 0
    for name, spec in DATASETS.items():
        if spec.format == "builtin":
            print(f"{name:<14} available   {spec.note}")
            continue
        where, looked = locate(spec, args.data_dir)
        if where is not None:
            print(f"{name:<14} available   {where}")
        elif not spec.remote:  # a format for the user's own files (textfile)
            print(f"{name:<14} your own    {spec.note}")
        else:
            print(
                f"{name:<14} missing     get it with: {fetch_command(spec)}"
                + (f"  ({spec.note})" if spec.note else "")
            )
            if args.verbose:
                print("               " + missing_message(spec, looked))
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    from bpfree.engine.environment import env_report, format_env, resolve_device

    print(format_env(env_report(resolve_device(args.device), refresh=args.refresh)))
    return 0


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line and exit code 2, like every other user mistake."""

    def error(self, message: str) -> typing.NoReturn:
        first = message.splitlines()[0] if message else "invalid arguments"
        self.exit(2, f"{self.prog}: error: {first[:300]} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from bpfree import __version__

    parser = OneLineParser(
        prog="bpfree", description="Train networks without backpropagation; measure honestly."
    )
    parser.add_argument("--version", action="version", version=f"bpfree {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    add_sweep_parsers(sub)
    add_compare_parsers(sub)
    lst = sub.add_parser("list", help="rules (with their properties), models and datasets")
    lst.add_argument(
        "rule", nargs="?", help="show this rule's hyperparameters and their defaults instead"
    )
    env = sub.add_parser("env", help="hardware, versions, matmul peak, and which meters work here")
    env.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    env.add_argument("--refresh", action="store_true", help="remeasure the cached matmul peak")
    data = sub.add_parser("data", help="list or fetch datasets")
    data_sub = data.add_subparsers(dest="data_cmd", required=True)
    dl = data_sub.add_parser("list", help="where each dataset was found, or how to get it")
    dl.add_argument("--data-dir", type=nonempty)
    dl.add_argument("-v", "--verbose", action="store_true", help="list the folders searched")
    df = data_sub.add_parser("fetch", help="download a dataset and verify its SHA-256")
    df.add_argument("name", type=nonempty)
    df.add_argument(
        "--data-dir", type=nonempty, help="where to put it (default $BPFREE_DATA or the user cache)"
    )
    df.add_argument(
        "--mirror",
        type=nonempty,
        help="base URL to fetch the files from instead of the canonical one",
    )
    df.add_argument(
        "--timeout", type=float, default=60.0, help="seconds per network read (default 60)"
    )
    df.add_argument(
        "--deadline",
        type=float,
        default=1800.0,
        help="seconds for each whole file (default 1800); files over 512 MiB are refused",
    )
    return parser


COMMANDS = {
    "train": _cmd_train,
    "list": _cmd_list,
    "data": _cmd_data,
    "env": _cmd_env,
    "sweep": cmd_sweep,
    "worker": cmd_worker,
    "compare": cmd_compare,
    "report": cmd_report,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with sigterm_as_interrupt():  # a killed command cleans up as on Ctrl-C, at any point
            return COMMANDS[args.command](args)
    except BpfreeError as exc:
        print(f"bpfree: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bpfree: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:  # a path the user gave: unwritable, a folder, missing, ...
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"bpfree: error: {one_line(str(exc.strerror or exc) + where)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
