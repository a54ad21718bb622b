"""tpSGD (target projection SGD) — Lomnitz, Daniels, Zhang & Piacentino, AAAI 2023, "Learning
with Local Gradients at the Edge" (arXiv 2208.08503). No official code exists; this follows the
paper's rule as summarised in ``algorithms-more.md`` section 12.

Each hidden layer regresses onto a fixed random projection of the one-hot label, with a delta
rule, layer by layer and with forward passes only. The body is L hidden layers
a_l = relu(z_l), z_l = a_{l-1} W_l^T + b_l (d_l units, a_0 = flattened x); the rule adds the
output layer W_out (C x d_L). Per batch of B samples (row-vector convention), for l = 1 .. L as
the forward pass reaches layer l:

    t_l     = onehot(y) P_l^T                                   (B, d_l)  local target
    delta_l = (a_l - t_l) * relu'(z_l)         (loss = "l2": J_l = ||t_l - a_l||^2 / 2)
    delta_l = sign(a_l - t_l) * relu'(z_l)     (loss = "l1")
    dW_l    = delta_l^T a_{l-1} / B,  db_l = mean_b delta_l
    logits  = a_L W_out^T + b_out;  dW_out = (softmax(logits) - onehot(y))^T a_L / B

P_l (d_l x C) is fixed, P_l ~ U(-s, s) with s = ``target_scale``, drawn once from the rule's
generator and kept as a buffer. Each layer's update needs only its own input and output, so
a layer is updated (its gradient written) before the next layer's forward and its activations
are dropped: memory does not grow with depth. No autograd call (``reverse_ad = "none"``), no
forward weight carries an error (no weight transport), and no layer waits for anything above it
(no backward locking; the targets come from the label alone, as in DRTP, which tpSGD
generalises).

Choices and deviations (the paper gives the rule, not these details):
  * The output layer learns from the task's own loss, cross-entropy with the label as target
    (tpSGD "generalises target projection to arbitrary loss functions"; the output layer's
    target needs no projection).
  * Target matrices uniform in [-1, 1] (``target_scale = 1``): targets of the order of a ReLU
    unit's output. With ReLU units a negative target drives its unit silent for that class.
  * The factor 2 of the squared loss's gradient is absorbed into the step size.
  * Optimizer: the toolkit's Adam (lr 1e-3, batch 128) so the rule and its backprop twin differ
    only in the update direction, as for FA and DFA; ``optimizer = "sgd"`` gives the paper's
    plain layer-wise SGD.
  * Native network mlp_2x1000, as the other MLP rules here (the paper's "shallow" nets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bpfree.rules.base import Batch, Rule, RuleInfo, register_rule
from bpfree.rules.toolkit import (
    FixedRandom,
    OptimizerSettings,
    output_error,
    positive,
    refuse_dropout,
    relu_mask,
    set_linear_grad,
    suggest_optimizer,
)


@dataclass(frozen=True)
class TPSGDHparams(OptimizerSettings):
    # Adam, lr 1e-3, batch 128, no weight decay: the toolkit's defaults (see the card)
    loss: Literal["l2", "l1"] = "l2"  # the layers' regression loss (l1: sign of the residual)
    target_scale: float = positive(1.0)  # P_l ~ U(-s, s)

    @classmethod
    def suggest(cls, trial: Any) -> TPSGDHparams:
        # The backprop baseline's optimizer space, plus the target scale around 1.
        scale = trial.suggest_float("target_scale", 0.1, 3.0, log=True)
        return cls(**suggest_optimizer(trial), target_scale=scale)


@register_rule
class TargetProjectionSGD(Rule):
    info = RuleInfo(
        name="tpsgd",
        title="tpSGD (each layer regresses onto a fixed random projection of the label)",
        citation="Lomnitz et al. 2023, AAAI, arXiv 2208.08503",
        reverse_ad="none",
        backward_locking=False,
        weight_transport=False,
        forward_passes_per_step=1,
        families=("mlp",),
        native={"*": "mlp_2x1000"},
    )
    Hparams = TPSGDHparams
    hp: TPSGDHparams

    def build(self) -> None:
        assert self.model is not None and self.generator is not None
        refuse_dropout(self.model)  # the delta rule below does not model dropout masks
        self.head = nn.Linear(self.model.out_dim, self.num_classes, bias=self.model.bias)
        self.modules["head"] = self.head
        shapes = [(d, self.num_classes) for d in self.model.block_dims]  # P_l (d_l, C)
        self.targets = FixedRandom(shapes, self.generator, self.hp.target_scale)
        self.modules["targets"] = self.targets
        self.opt = self.hp.optimizer_for(self.modules.parameters())

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    @torch.no_grad()
    def train_step(self, batch: Batch) -> torch.Tensor:
        assert self.model is not None
        self.opt.zero_grad(set_to_none=True)  # before the forward: no stale gradient in the peak
        onehot = F.one_hot(batch.y, self.num_classes).to(batch.x.dtype)  # (B, C)
        a = batch.x.flatten(1)  # a_0 (B, d_in)
        for k, block in enumerate(self.model.blocks):
            h = torch.relu(block.linear(a))  # a_l (B, d_l)
            residual = h - onehot @ self.targets[k].t()  # a_l - t_l, (B, C) x (C, d_l)
            if self.hp.loss == "l1":
                residual.sign_()
            set_linear_grad(block.linear, residual.mul_(relu_mask(h)), a)
            a = h  # a_{l-1} and the residual are dropped here: the next layer needs only a_l
        logits = self.head(a)  # (B, C)
        set_linear_grad(self.head, output_error(logits, batch.y), a)
        self.opt.step()
        return F.cross_entropy(logits, batch.y)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        return self.head(self.model(x))
