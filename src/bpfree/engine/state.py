"""The state of a run's loop in one record: where it is, what it has seen, what it has spent.

Everything a checkpoint must hold to continue exactly where a run stopped (besides the rule and
the generators) is here, so saving and resuming cannot forget a piece.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bpfree.config import TrainConfig
from bpfree.engine.early_stopping import EarlyStopping
from bpfree.meters import Reading
from bpfree.rules import Rule


def new_stopper(config: TrainConfig) -> EarlyStopping:
    mode = "max" if config.monitor == "val_accuracy" else "min"
    return EarlyStopping(mode, config.patience, config.min_delta)


@dataclass
class LoopState:
    stopper: EarlyStopping  # early stopping of the current phase
    phase: int = 0  # index of the current phase
    epoch_in_phase: int = 0  # epochs done in the current phase
    best: dict[str, Any] | None = None  # the current phase's best weights so far
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    cost: dict[str, Reading] = field(default_factory=dict)  # readings accumulated so far
    samples: int = 0  # training samples processed, all phases (data passes x N)
    steps: int = 0  # optimizer steps (train_step calls), all phases
    phase_loss: float | None = None  # the current phase's first step loss (divergence check)
    stopped_by: str = ""  # what ended training: epochs, early_stopping, budget_flops, ...
    status: str = "completed"  # "completed" | "diverged" (set when the loop ends early)
    reason: str = ""

    @property
    def epoch(self) -> int:
        """Epochs done in the whole run (over all phases)."""
        return len(self.history)

    def next_phase(self, config: TrainConfig, phases: int) -> None:
        """Move on to the next of ``phases`` phases (after the last, keep the last's stopper:
        the result reports its best epoch)."""
        self.phase, self.epoch_in_phase, self.phase_loss = self.phase + 1, 0, None
        if self.phase < phases:
            self.best, self.stopper = None, new_stopper(config)

    def to_checkpoint(self) -> dict[str, Any]:
        return {
            "cost": {k: r.to_dict() for k, r in self.cost.items()},
            "history": self.history,
            "phase": self.phase,
            "epoch_in_phase": self.epoch_in_phase,
            "best": self.best,
            "early_stopping": self.stopper.state(),
            "samples": self.samples,
            "steps": self.steps,
            "phase_loss": self.phase_loss,
            "stopped_by": self.stopped_by,
        }

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> LoopState:
        return cls(
            stopper=EarlyStopping(**ckpt["early_stopping"]),
            phase=ckpt["phase"],
            epoch_in_phase=ckpt["epoch_in_phase"],
            best=ckpt["best"],
            history=ckpt["history"],
            cost={k: Reading.from_dict(v) for k, v in ckpt["cost"].items()},
            samples=ckpt["samples"],
            steps=ckpt["steps"],
            phase_loss=ckpt["phase_loss"],
            stopped_by=ckpt["stopped_by"],
        )


def clone_modules(rule: Rule) -> dict[str, Any]:
    return {
        "modules": {k: v.detach().clone() for k, v in rule.modules.state_dict().items()},
        "extra": rule.extra_state(),
    }


def restore_modules(rule: Rule, best: dict[str, Any]) -> None:
    rule.modules.load_state_dict(best["modules"])
    rule.load_extra_state(best["extra"])
