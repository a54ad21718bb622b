"""Forward gradient (FG) — Baydin, Pearlmutter, Syme, Wood & Torr 2022, "Gradients without
Backpropagation", arXiv 2202.08587.

The network is the model body and a linear output head; theta is all of their parameters
(n numbers), f(theta) the batch's mean cross-entropy. Per step:

    v ~ N(0, I_n)                                  a random tangent over every parameter
    (f, d) = jvp(f, theta, v)                      one forward-mode pass: f and d = grad f . v
    g = d v                                        the forward gradient, E[g] = grad f
    theta <- optimizer step with g                 (plain SGD in the paper)

``d`` comes from ``torch.func.jvp`` over ``torch.func.functional_call`` (primals and tangents
as tuples), under ``torch.no_grad()`` on detached parameters; a network that updates buffers in
place during the forward (BatchNorm's running statistics, in ``cnn_3block``) is run with dual
numbers (``torch.autograd.forward_ad``) instead, which jvp refuses to trace. Either way dual
numbers carry the tangent through the forward pass, no graph is recorded and no activation is
kept beyond the layer being computed, so memory does not grow with depth. No reverse-mode call
is made (``reverse_ad = "none"``, checked by the conformance suite), no weight is transported,
and no layer waits for another after the single forward pass (``backward_locking = False``).

Options:
  * ``tangents = k``: k independent tangents per step (k jvp passes; ``forward_passes()`` and
    the stored rule card say k). ``combine = "mean"`` averages the k forward gradients
    (unbiased, variance / k);
    ``combine = "project"`` uses the orthogonal projection of grad f onto span(v_1..v_k),
    V (V^T V)^-1 d, as in Flügel et al. 2025 ("Beyond Backpropagation: Optimization with
    Multi-Tangent Forward Gradients", arXiv 2410.17764): exact along the span, biased towards
    zero (by about k / n) elsewhere.
  * Tangents are drawn from the rule's own generator (never the global one), per tensor in a
    fixed order, so a resumed run draws the same tangents.
  * Fine-tuning (``--trainable head|lora``): theta is only the tensors with requires_grad; the
    frozen ones enter the forward pass as constants (no tangent, never updated). On a text
    model (``minilm_l6``, ZO-Bench's "Forward-Grad") the tangent flows through the attention
    layers by dual numbers (the encoder holds buffers).

Choices and deviations:
  * Optimizer: SGD without momentum, as in the paper; the paper's step sizes were not available
    here to check. Default lr 2e-4, by hand: on Fashion-MNIST (seed 0, 3 passes over the first
    5,000 training images) lr 2e-4, 1e-3 and 5e-3 reached 15.8%, 35.6% and diverged on
    validation, but 1e-3 then diverged within the first pass over the full training set (seeds
    0 and 1), so the default is the largest of the three that did not. Comparisons should tune
    it (``compare --tune``), as the committed one does. The forward gradient's variance grows
    with n (E|g|^2 is about n |grad f|^2), so the step sizes that work are far below what the
    same SGD takes with the true gradient.
  * Native network mlp_2x1000, as the other MLP rules here (the paper's MNIST MLP differs).
  * A jvp costs more than a forward (each op also propagates its tangent, about 1.5-3x the
    FLOPs of the forward alone); the FLOP meter counts the operations the jvp really runs.

The reported training loss is f(theta) from the jvp's primal output, before the update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp

from bpfree.errors import ConfigError
from bpfree.rules.base import Batch, Rule, RuleInfo, register_rule
from bpfree.rules.toolkit import OptimizerName, OptimizerSettings, at_least, positive


@dataclass(frozen=True)
class FGHparams(OptimizerSettings):
    optimizer: OptimizerName = "sgd"  # the paper's plain SGD
    lr: float = positive(2e-4)  # see the card: 1e-3 diverged on the full data; tune it
    momentum: float = 0.0
    tangents: int = at_least(1, 1)  # tangents per step (one jvp each)
    combine: Literal["mean", "project"] = "mean"

    @classmethod
    def suggest(cls, trial: Any) -> FGHparams:
        return cls(
            lr=trial.suggest_float("lr", 1e-6, 1e-2, log=True),
            batch_size=trial.suggest_categorical("batch_size", [64, 128, 256]),
        )


class _Classifier(nn.Module):
    """Body then head: the one function whose forward-mode derivative is taken."""

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@register_rule
class ForwardGradient(Rule):
    info = RuleInfo(
        name="fg",
        title="Forward gradient (directional derivative along a random tangent, forward mode)",
        citation="Baydin et al. 2022, arXiv 2202.08587",
        reverse_ad="none",
        backward_locking=False,
        weight_transport=False,
        forward_passes_per_step=1,
        families=("mlp", "cnn", "text"),
        native={"*": "mlp_2x1000", "text": "minilm_l6"},
        trainable=("all", "head", "lora"),  # tangents only for requires_grad tensors
    )
    Hparams = FGHparams
    hp: FGHparams

    def build(self) -> None:
        assert self.model is not None
        self.head = nn.Linear(self.model.out_dim, self.num_classes)
        self.modules["head"] = self.head
        self.net = _Classifier(self.model, self.head)  # shares the modules' parameters
        # the tensors it trains (a frozen body or a LoRA-adapted one trains only some): only
        # they get a tangent; the others enter the forward pass as constants
        trained = [(name, p) for name, p in self.net.named_parameters() if p.requires_grad]
        self.names = tuple(name for name, _ in trained)
        self.trained = [p for _, p in trained]
        self.dual_numbers = any(True for _ in self.net.buffers())  # see _directional
        self.model_name = self.model.spec.name
        self.opt = self.hp.optimizer_for(self.modules.parameters())

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def _tangent(self, params: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(
            torch.randn(p.shape, generator=self.generator, device=p.device, dtype=p.dtype)
            for p in params
        )

    @torch.no_grad()
    def train_step(self, batch: Batch) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)  # before the forward: no stale update in the peak
        params = tuple(p.detach() for p in self.trained)

        def loss_of(*values: torch.Tensor) -> torch.Tensor:
            logits = functional_call(
                self.net, dict(zip(self.names, values, strict=True)), (batch.x,)
            )
            return F.cross_entropy(logits, batch.y)

        vs, ds = [], []
        for _ in range(self.hp.tangents):
            v = self._tangent(params)
            loss, d = self._directional(loss_of, params, v)
            vs.append(v)
            ds.append(d)
        coef = self._coefficients(vs, torch.stack(ds))  # g = sum_i coef_i v_i
        for j, p in enumerate(self.trained):
            g = vs[0][j].mul_(coef[0])  # in place: the tangent becomes the update
            for i in range(1, len(vs)):
                g.add_(vs[i][j] * coef[i])
            p.grad = g
        self.opt.step()  # the update stays in .grad until the next step, as backprop's does
        return loss.detach()

    def _directional(
        self, loss_of: Any, params: tuple[torch.Tensor, ...], v: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(f, grad f . v) in one forward-mode pass: torch.func.jvp, or dual numbers
        (torch.autograd.forward_ad) for modules that update buffers in place (BatchNorm's
        running statistics), which jvp refuses to trace."""
        try:
            if self.dual_numbers:
                with fwAD.dual_level():
                    out = loss_of(*(fwAD.make_dual(p, t) for p, t in zip(params, v, strict=True)))
                    loss, d = fwAD.unpack_dual(out)
                    return loss, d
            return jvp(loss_of, params, v)
        except (NotImplementedError, RuntimeError) as exc:
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "forward" not in text.lower() and "jvp" not in text.lower():
                raise
            raise ConfigError(
                f"rule 'fg' cannot differentiate {self.model_name} in forward mode: an operator "
                f"has no forward-mode derivative in torch ({text[:200]}); choose another --model"
            ) from None

    def _coefficients(self, vs: list[tuple[torch.Tensor, ...]], d: torch.Tensor) -> torch.Tensor:
        """Weights of the tangents in the update: d / k (mean) or (V^T V)^-1 d (projection)."""
        if self.hp.combine == "mean":
            return d / len(vs)
        gram = torch.stack(
            [
                torch.stack([sum((a * b).sum() for a, b in zip(vi, vj, strict=True)) for vj in vs])
                for vi in vs
            ]
        )
        return torch.linalg.solve(gram, d)

    def forward_passes(self) -> int:
        return self.hp.tangents  # one jvp per tangent

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
