"""The divergence guard, the same for every rule: checked after each training window.

A run has diverged when its epoch's mean training loss is not finite, when a parameter is not
finite, or when the loss has grown far above where the phase started: above ``factor`` times
the phase's first-step loss (with a floor of 0.01 on that reference, so a loss that starts near
zero is not held to a near-zero bound). A diverged run ends with status ``diverged`` and the
reason; it is counted, never dropped, in a comparison.
"""

from __future__ import annotations

import math

import torch

from bpfree.rules import Rule

FLOOR = 1e-2


def divergence(
    rule: Rule, loss: float, start: float | None, factor: float, epoch: int
) -> str | None:
    """Why the run has diverged after ``epoch``, or None."""
    if not math.isfinite(loss):
        return f"non-finite training loss ({loss}) in epoch {epoch}"
    bad = [name for name, p in rule.modules.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        return f"non-finite parameters after epoch {epoch}: {', '.join(bad[:3])}"
    if start is not None and math.isfinite(start):
        bound = factor * max(abs(start), FLOOR)
        if abs(loss) > bound:
            return (
                f"training loss {loss:.4g} in epoch {epoch} is above {factor:g} x the phase's "
                f"first-step loss {start:.4g} (the divergence bound)"
            )
    return None
