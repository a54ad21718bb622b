"""The run's budget in one unit: data passes over the training set, summed over all phases.

``--epochs N`` is N passes in total per run. A multi-phase rule splits them as it declares
(:class:`~bpfree.rules.Phase`): a phase with a fixed ``max_epochs`` takes that many (CaFo-DFA's
block pretraining counts), the other phases share what is left equally. So a rule and its
backprop twin can never consume different budgets under "the same ``--epochs``".

Optional ceilings stop a run at the same compute: ``budget_flops`` (training FLOPs, from the
per-step FLOP probe, so a run stops at the last step that fits) and ``budget_seconds``
(training wall time, checked before every step; on a GPU the clock is read without a
synchronisation, so a step already queued may still run).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from bpfree.errors import ConfigError
from bpfree.meters import Reading
from bpfree.rules import Phase

STOP_EPOCHS, STOP_EARLY = "epochs", "early_stopping"
STOP_FLOPS, STOP_SECONDS = "budget_flops", "budget_seconds"


def allot_epochs(phases: list[Phase], total: int, rule: str) -> list[Phase]:
    """The phases with ``max_epochs`` set to each one's share of ``total`` data passes.

    Fixed phases take their ``max_epochs``; the others share the rest equally (earlier phases
    take the remainder). A split that leaves some phase no pass at all is refused.
    """
    fixed = sum(p.max_epochs for p in phases if p.max_epochs is not None)
    free = [p for p in phases if p.max_epochs is None]
    left = total - fixed
    if left < len(free) or left < 0:
        names = ", ".join(
            f"{p.name}={p.max_epochs}" if p.max_epochs is not None else f"{p.name}>=1"
            for p in phases
        )
        raise ConfigError(
            f"rule {rule!r} needs at least {fixed + len(free)} data passes in total "
            f"({names}), but the budget is --epochs {total}"
        )
    share, extra = divmod(left, len(free)) if free else (0, 0)
    out, k = [], 0
    for p in phases:
        if p.max_epochs is None:
            out.append(dataclasses.replace(p, max_epochs=share + (1 if k < extra else 0)))
            k += 1
        else:
            out.append(p)
    return out


@dataclass(frozen=True)
class Ceiling:
    """Optional compute ceilings of a run: training FLOPs and training seconds."""

    flops: float | None = None
    seconds: float | None = None

    def steps_left(
        self, cost: dict[str, Reading], step_flops: int | None, setup_flops: int
    ) -> int | None:
        """How many more full steps fit under the FLOPs ceiling (None: no ceiling)."""
        if self.flops is None:
            return None
        if not step_flops:
            raise ConfigError(
                "budget_flops needs the per-step FLOP count, which could not be measured "
                "for this rule (see its train_flops reading); use budget_seconds or epochs"
            )
        spent = sum(
            cost[k].value or 0.0
            for k in ("train_flops_forward", "train_flops_backward")
            if k in cost
        )
        return max(0, math.floor((self.flops - spent - setup_flops) / step_flops))

    def seconds_left(self, cost: dict[str, Reading]) -> float | None:
        if self.seconds is None:
            return None
        wall = cost.get("train_wall_time")
        return self.seconds - (wall.value or 0.0 if wall is not None else 0.0)


def flops_so_far(cost: dict[str, Reading]) -> tuple[float | None, float | None]:
    """(training, selection) FLOPs so far."""
    parts = [cost.get("train_flops_forward"), cost.get("train_flops_backward")]
    train = (
        None
        if any(r is None or r.value is None for r in parts)
        else sum(r.value for r in parts if r is not None and r.value is not None)
    )
    sel = cost.get("selection_flops")
    return train, (sel.value if sel is not None else None)


def difference(after: float | None, before: float | None) -> float | None:
    if after is None:
        return None
    return after - (before or 0.0)
