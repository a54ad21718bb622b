"""The outcome of one run, as returned by :func:`bpfree.train` and stored in ``result.json``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpfree.config import TrainConfig
from bpfree.data import DataBundle
from bpfree.engine.state import LoopState
from bpfree.meters.base import Reading, format_reading
from bpfree.rules import Rule, RuleInfo


def rule_card(info: RuleInfo, forward_passes: int | None = None) -> dict[str, Any]:
    """A rule's declared properties, as stored with every result (``forward_passes``: the count
    under the run's settings, :meth:`Rule.forward_passes`)."""
    return {
        "title": info.title,
        "citation": info.citation,
        "reverse_ad": info.reverse_ad,
        "backward_locking": info.backward_locking,
        "weight_transport": info.weight_transport,
        "forward_passes_per_step": forward_passes or info.forward_passes_per_step,
        "rule_version": info.rule_version,
    }


@dataclass
class RunResult:
    status: str  # "completed" | "diverged" | "interrupted"
    rule: str
    model: str
    dataset: str
    seed: int
    metrics: dict[str, Any]
    cost: dict[str, dict[str, Any]]
    config: dict[str, Any]
    rule_info: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    run_dir: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "rule": self.rule,
            "model": self.model,
            "dataset": self.dataset,
            "seed": self.seed,
            "metrics": self.metrics,
            "cost": self.cost,
            "rule_info": self.rule_info,
            "data": self.data,
            "config": self.config,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], run_dir: Path | None = None) -> RunResult:
        return cls(
            status=data["status"],
            rule=data["rule"],
            model=data["model"],
            dataset=data["dataset"],
            seed=data["seed"],
            metrics=data["metrics"],
            cost=data["cost"],
            config=data["config"],
            rule_info=data.get("rule_info", {}),
            data=data.get("data", {}),
            reason=data.get("reason", ""),
            run_dir=run_dir,
        )

    @property
    def test_accuracy(self) -> float | None:
        return self.metrics.get("test_accuracy")

    def summary(self) -> str:
        """A few human lines for the end of ``bpfree train``."""
        m = self.metrics

        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{100 * v:.2f}%"

        lines = [
            f"{self.rule} on {self.model} / {self.dataset} (seed {self.seed}): {self.status}"
            + (f" — {self.reason}" if self.reason else ""),
            f"  test accuracy {pct(m.get('test_accuracy'))}, "
            f"validation {pct(m.get('val_accuracy'))}"
            f" (best epoch {m.get('best_epoch')}, {m.get('epochs_trained')} epochs trained)",
            f"  {m.get('data_passes', 0):.3g} data passes, {m.get('optimizer_steps')} steps "
            f"(stopped by {m.get('stopped_by') or 'n/a'}); "
            f"train time {format_reading(self.cost.get('train_wall_time'))}, "
            f"selection time {format_reading(self.cost.get('selection_wall_time'))}",
            f"  train FLOPs {format_reading(self.cost.get('train_flops'))} "
            f"({format_reading(self.cost.get('train_flops_per_s'))}), "
            f"peak tensor memory {format_reading(self.cost.get('peak_tensor_memory'))} "
            f"(activations {format_reading(self.cost.get('activation_memory'))}, probe), "
            f"peak RSS delta {format_reading(self.cost.get('peak_rss_delta'))}",
            f"  energy CPU {format_reading(self.cost.get('cpu_energy'))}, "
            f"GPU {format_reading(self.cost.get('gpu_energy'))}, "
            f"carbon {format_reading(self.cost.get('carbon'))}",
        ]
        if self.run_dir is not None:
            lines.append(f"  run directory: {self.run_dir}")
        return "\n".join(lines)


def build_result(
    config: TrainConfig,
    rule: Rule,
    data: DataBundle,
    status: str,
    reason: str,
    state: LoopState,
    cost: dict[str, Reading],
    test: tuple[float, float] | None,
    run_dir: Path | None,
) -> RunResult:
    """The result of a run from its loop state: metrics, what it consumed, and its costs."""
    history = state.history
    best_epoch = state.stopper.best_epoch if state.stopper.best_epoch > 0 else None
    best_record = next((h for h in history if h["epoch"] == best_epoch), None)
    phases: dict[str, dict[str, Any]] = {}
    for h in history:
        p = phases.setdefault(h["phase"], {"epochs": 0, "best_epoch": None})
        p["epochs"] += 1
        if h["improved"]:
            p["best_epoch"] = h["epoch"]
    metrics = {
        "test_accuracy": test[0] if test else None,
        "test_loss": test[1] if test else None,
        "val_accuracy": best_record["val_accuracy"] if best_record else None,
        "val_loss": best_record["val_loss"] if best_record else None,
        "best_epoch": best_epoch,
        "epochs_trained": len(history),
        "phases": phases,
        "num_parameters": rule.num_parameters(),
        "trainable_parameters": sum(
            p.numel() for p in rule.modules.parameters() if p.requires_grad
        ),
        "data_passes": state.samples / max(int(data.train_x.shape[0]), 1),
        "optimizer_steps": state.steps,
        "stopped_by": state.stopped_by if status == "completed" else "",
    }
    return RunResult(
        status=status,
        reason=reason,
        rule=config.rule,
        model=str(config.model),
        dataset=config.dataset,
        seed=config.seed,
        metrics=metrics,
        cost={k: r.to_dict() for k, r in cost.items()},
        config=config.to_dict(),
        rule_info=rule_card(rule.info, rule.forward_passes()),
        data=data.info,
        run_dir=run_dir,
    )
