"""Forward gradient with local guesses (fg_guess) — Fournier, Rivaud, Belilovsky, Eickenberg &
Oyallon, ICML 2023, "Can Forward Gradient Match Backpropagation?", arXiv 2306.06968; their best
variant: global target, local-gradient guess. Computed in forward mode here.

The body is L blocks (a_j = block_j(a_{j-1}), a_0 = x), each with a small auxiliary linear head
aux_j (d_j -> C), and an output head W_out on a_L. Per batch (losses are mean cross-entropies):

    for j = 1 .. L, on the detached input a_{j-1}:
        guess   g_j = grad_{theta_j} CE(aux_j(block_j(a_{j-1})), y)       reverse mode, within
                                                                           block j (and aux_j)
        s_j     = <grad_{theta_j} L, g_j>,  L = CE(W_out(block_L(..block_j(a_{j-1}))), y)
                  one jvp of L along the tangent g_j on theta_j (torch.func.jvp), through
                  blocks j+1..L and the head at their current weights
        update  G_j = s_j / (|g_j|^2 + eps) * g_j                          the projection of
                                                                           the global gradient
                                                                           on the guess
    aux_j learns from its own local loss; W_out from the true gradient of L (its local loss is
    the global one, as the reference trains its last block).

Each block's graph is freed right after its local backward, and the jvps record no graph, so
activation memory does not grow with depth. Reverse-mode AD is used only inside a block and its
auxiliary head (``reverse_ad = "within_block"``); the global signal s_j is a forward-mode
directional derivative, never a backward pass. A block still waits for the forward through the
blocks above it to reach the loss (``backward_locking = True`` by this project's definition:
its update depends on the layers above, though no gradient comes back from them).

Where this departs from the reference code (streethagore/ForwardLocalGradient):
  * The reference *simulates* the estimator: target and guess both come from backprop
    (per-sample gradients through hooks), then are projected. Here s_j is a real jvp; no
    global backward pass exists, so time and memory are what forward mode costs.
  * The projection is per batch (the batch-mean gradients), not per sample: per-sample
    projections would need one jvp per sample and block.
  * Weight space only; the reference's bias/BatchNorm bug (a bias projection written into
    ``weight.grad``) has no counterpart: every parameter tensor gets its own slice of G_j.
  * The blocks' jvps run one after the other, L(L+1)/2 block passes per step (3 for the native
    2-block net); a single forward carrying all L tangents at once would cost the same FLOPs.
  * Networks: the reference splits ResNet-18 (CIFAR-10) into 8 or 16 blocks with small conv
    auxiliary nets; here MLPs only (the issue's testbed), the native net mlp_2x1000 with linear
    auxiliary heads. Optimizer settings from the reference's README command: SGD, lr 5e-2,
    weight decay 5e-4 (momentum 0.9 assumed, not verified), eps 1e-14.

The reported training loss is the global loss L of the output head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp

from bpfree.rules.base import Batch, Rule, RuleInfo, register_rule
from bpfree.rules.toolkit import (
    OptimizerName,
    OptimizerSettings,
    local_heads,
    nonnegative,
    positive,
    suggest_optimizer,
)


@dataclass(frozen=True)
class FGGuessHparams(OptimizerSettings):
    optimizer: OptimizerName = "sgd"  # the reference's README command
    lr: float = positive(5e-2)
    weight_decay: float = nonnegative(5e-4)
    eps_norm: float = positive(1e-14)  # added to |g_j|^2

    @classmethod
    def suggest(cls, trial: Any) -> FGGuessHparams:
        return cls(**suggest_optimizer(trial, lr=(1e-3, 1e-1)))


@register_rule
class ForwardGradientGuess(Rule):
    info = RuleInfo(
        name="fg_guess",
        title="Forward gradient along local-loss guesses (global target by jvp)",
        citation="Fournier et al. 2023, ICML, arXiv 2306.06968",
        reverse_ad="within_block",
        backward_locking=True,
        weight_transport=False,
        forward_passes_per_step=2,  # the local sweep, and the jvps (L(L+1)/2 block passes)
        families=("mlp",),
        native={"*": "mlp_2x1000"},
    )
    Hparams = FGGuessHparams
    hp: FGGuessHparams

    def build(self) -> None:
        assert self.model is not None
        self.head = nn.Linear(self.model.out_dim, self.num_classes)
        self.aux = local_heads(self.model.block_dims, self.num_classes)
        self.modules["head"] = self.head
        self.modules["aux"] = self.aux
        self.opt = self.hp.optimizer_for(self.modules.parameters())

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def _global_loss(self, j: int, h: torch.Tensor, y: torch.Tensor) -> Any:
        """theta_j -> L: block j at weights theta_j, then the blocks above and the head."""
        assert self.model is not None
        block = self.model.blocks[j]
        names = tuple(name for name, _ in block.named_parameters())

        def loss(*weights: torch.Tensor) -> torch.Tensor:
            a = functional_call(block, dict(zip(names, weights, strict=True)), (h,))
            for above in self.model.blocks[j + 1 :]:  # type: ignore[index]
                a = above(a)
            return F.cross_entropy(self.head(a), y)

        return loss

    def train_step(self, batch: Batch) -> torch.Tensor:
        assert self.model is not None
        self.opt.zero_grad(set_to_none=True)
        h = batch.x
        for j, block in enumerate(self.model.blocks):
            a = block(h)  # graph inside block j only: h is detached
            F.cross_entropy(self.aux[j](a), batch.y).backward()  # the guess, and aux_j's update
            params = tuple(block.parameters())
            guess = tuple(p.grad for p in params)
            with torch.no_grad():
                weights = tuple(p.detach() for p in params)
                _, s = jvp(self._global_loss(j, h, batch.y), weights, guess)  # <grad L, g_j>
                norm2 = sum(g.pow(2).sum() for g in guess)
                coef = s / (norm2 + self.hp.eps_norm)
                for g in guess:
                    g.mul_(coef)  # G_j = s_j / |g_j|^2 g_j, in place of the guess
            h = a.detach()  # block j's graph is gone: nothing refers to it any more
        loss = F.cross_entropy(self.head(h), batch.y)  # h detached: the head's true gradient
        loss.backward()
        self.opt.step()
        return loss.detach()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        return self.head(self.model(x))
