"""Optimizer settings every rule's Hparams reuses, and the optimizers built from them.

``OptimizerSettings`` holds what a rule and its backprop twin must share to be compared "at the
same optimizer" (protocol.md point 4): optimizer, learning rate, weight decay, momentum, batch
size and step-size schedule. A rule's Hparams subclasses it and overrides the defaults its paper
uses.

The schedule is applied to every optimizer a rule builds, by the framework, not the rule: at the
start of each phase :func:`schedule_phase` records each parameter group's base step size and the
phase's number of steps in the group itself (so it is checkpointed with the optimizer), and a
hook sets the step size before every ``optimizer.step()``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from bpfree.errors import ConfigError
from bpfree.rules.hparams import Hparams, at_least, nonnegative, positive

OptimizerName = Literal["adam", "adamw", "sgd"]
OPTIMIZER_FIELDS = (
    "optimizer",
    "lr",
    "weight_decay",
    "momentum",
    "batch_size",
    "lr_cooldown",
    "lr_drops",
)
# Fields a matched twin takes over only when they are set (so comparisons planned before the
# field existed keep their digest).
OPTIONAL_OPTIMIZER_FIELDS = ("lr_drops",)
DROP_FACTOR = 0.1  # the step-size multiplier at each of ``lr_drops``


def make_optimizer(
    name: str, params: Iterable[Any], lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """Adam/AdamW (decoupled decay) or SGD with momentum, the optimizers the rules share.

    Adam and AdamW use PyTorch's fused kernels (CPU and CUDA): the same update as the default
    multi-tensor version, in one pass over memory. On 2 CPU cores it is ~3x faster for the
    1.8M parameters of mlp_2x1000, an overhead every rule would otherwise pay per step.
    """
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)


@dataclass(frozen=True)
class OptimizerSettings(Hparams):
    """The optimizer part of a rule's hyperparameters (defaults: Adam, lr 1e-3, batch 128)."""

    batch_size: int = at_least(128, 1)
    lr: float = positive(1e-3)  # Adam's default step size (Kingma & Ba 2015)
    weight_decay: float = nonnegative(0.0)
    optimizer: OptimizerName = "adam"
    momentum: float = nonnegative(0.9)  # only for sgd
    # Linear cool-down over the second half of each phase (Hinton's FF code, the loeweX port):
    # lr for the first half of the phase's T steps, then lr * 2 (T - t) / T at step t.
    lr_cooldown: bool = False
    # Step drops: comma-separated fractions of each phase's steps after which the step size is
    # multiplied by 0.1 (e.g. "0.6,0.9": PEPITA's drops at epochs 60 and 90 of 100, scaled to
    # the run's budget); "" for none.
    lr_drops: str = ""

    def validate(self) -> None:
        super().validate()
        drop_fractions(self.lr_drops)

    def drops(self) -> tuple[float, ...]:
        return drop_fractions(self.lr_drops)

    def optimizer_for(
        self, params: Iterable[Any], *, lr: float | None = None, weight_decay: float | None = None
    ) -> torch.optim.Optimizer:
        """An optimizer over ``params`` with these settings (``lr``/``weight_decay`` override
        them, e.g. for a rule phase with its own step size)."""
        return make_optimizer(
            self.optimizer,
            params,
            self.lr if lr is None else lr,
            self.weight_decay if weight_decay is None else weight_decay,
            self.momentum,
        )

    def optimizer_settings(self) -> dict[str, Any]:
        """The fields a matched backprop twin takes over from this rule."""
        defaults = OptimizerSettings()
        return {
            k: getattr(self, k)
            for k in OPTIMIZER_FIELDS
            if k not in OPTIONAL_OPTIMIZER_FIELDS or getattr(self, k) != getattr(defaults, k)
        }


def drop_fractions(text: str) -> tuple[float, ...]:
    """The fractions of ``lr_drops`` ("0.6,0.9"), increasing, each in (0, 1); ConfigError
    otherwise."""
    if not text.strip():
        return ()
    try:
        fractions = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(
            f"lr_drops must be comma-separated fractions such as 0.6,0.9, got {text!r}"
        ) from None
    if any(not 0 < f < 1 for f in fractions) or list(fractions) != sorted(set(fractions)):
        raise ConfigError(f"lr_drops must be increasing fractions in (0, 1), got {text!r}")
    return fractions


def suggest_optimizer(
    trial: Any,
    *,
    lr: tuple[float, float] = (1e-4, 1e-2),
    weight_decay: tuple[float, float] = (1e-6, 1e-1),
    batch_sizes: tuple[int, ...] = (64, 128, 256),
) -> dict[str, Any]:
    """The usual optimizer search space, sampled from an ``optuna.Trial``: lr and weight decay
    log-uniform, a batch size from a list. The defaults are the backprop baseline's space (lr
    around Adam's 1e-3, weight decay from none to strong, batches around the rules' native
    100-128); a rule that shares them is tuned over a space comparable to its twin's."""
    return {
        "lr": trial.suggest_float("lr", *lr, log=True),
        "weight_decay": trial.suggest_float("weight_decay", *weight_decay, log=True),
        "batch_size": trial.suggest_categorical("batch_size", list(batch_sizes)),
    }


_BASE, _STEP, _TOTAL = "bpfree_base_lr", "bpfree_step", "bpfree_phase_steps"
_COOL, _DROPS = "bpfree_cooldown", "bpfree_drops"


def cooldown_factor(step: int, total: int) -> float:
    """The cool-down multiplier of step ``step`` (0-based) of ``total``: 1 for the first half,
    then 2 (T - t) / T (never below 1 / T)."""
    return min(1.0, 2.0 * max(total - step, 1) / total)


def drop_factor(step: int, total: int, drops: tuple[float, ...] | list[float]) -> float:
    """0.1 to the number of drop points (fractions of ``total``) that step ``step`` has passed."""
    return DROP_FACTOR ** sum(step >= round(f * total) for f in drops)


def _schedule_hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    for group in opt.param_groups:
        total = group.get(_TOTAL, 0)
        if total > 0:
            step, factor = group[_STEP], drop_factor(group[_STEP], total, group.get(_DROPS, ()))
            if group.get(_COOL, True):
                factor *= cooldown_factor(step, total)
            group["lr"] = group[_BASE] * factor
            group[_STEP] += 1


def schedule_phase(
    opt: torch.optim.Optimizer,
    total_steps: int,
    *,
    cooldown: bool = True,
    drops: tuple[float, ...] = (),
) -> None:
    """Schedule the step size of ``opt`` over the ``total_steps`` steps of a phase: the linear
    cool-down of its second half (``cooldown``) and/or a x0.1 drop at each fraction of
    ``drops``."""
    if not getattr(opt, "_bpfree_cooldown", False):
        opt.register_step_pre_hook(_schedule_hook)
        opt._bpfree_cooldown = True  # type: ignore[attr-defined]
    for group in opt.param_groups:
        group.setdefault(_BASE, group["lr"])
        group[_STEP], group[_TOTAL] = 0, total_steps
        group[_COOL], group[_DROPS] = cooldown, list(drops)
