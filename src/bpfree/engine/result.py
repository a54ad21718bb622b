"""The outcome of one run, as returned by :func:`bpfree.train` and stored in ``result.json``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpfree.meters.base import format_reading
from bpfree.rules import RuleInfo


def rule_card(info: RuleInfo) -> dict[str, Any]:
    """A rule's declared properties, as stored with every result."""
    return {
        "title": info.title,
        "citation": info.citation,
        "reverse_ad": info.reverse_ad,
        "backward_locking": info.backward_locking,
        "weight_transport": info.weight_transport,
        "forward_passes_per_step": info.forward_passes_per_step,
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
            f"  train time {format_reading(self.cost.get('train_wall_time'))}, "
            f"eval time {format_reading(self.cost.get('eval_wall_time'))}",
            f"  train FLOPs {format_reading(self.cost.get('train_flops'))} "
            f"({format_reading(self.cost.get('train_flops_per_s'))}), "
            f"peak tensor memory {format_reading(self.cost.get('peak_tensor_memory'))}, "
            f"peak RSS delta {format_reading(self.cost.get('peak_rss_delta'))}",
            f"  energy CPU {format_reading(self.cost.get('cpu_energy'))}, "
            f"GPU {format_reading(self.cost.get('gpu_energy'))}, "
            f"carbon {format_reading(self.cost.get('carbon'))}",
        ]
        if self.run_dir is not None:
            lines.append(f"  run directory: {self.run_dir}")
        return "\n".join(lines)
