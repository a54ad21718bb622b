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
    status: str = "completed"  # "completed" | "diverged" (set when the loop ends early)
    reason: str = ""

    @property
    def epoch(self) -> int:
        """Epochs done in the whole run (over all phases)."""
        return len(self.history)

    def next_phase(self, config: TrainConfig, phases: int) -> None:
        """Move on to the next of ``phases`` phases (after the last, keep the last's stopper:
        the result reports its best epoch)."""
        self.phase, self.epoch_in_phase = self.phase + 1, 0
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
        )
