"""Direct Feedback Alignment (DFA) — Nøkland 2016, arXiv 1609.01596.

The model body is L hidden layers a_l = relu(z_l), z_l = a_{l-1} W_l^T + b_l (d_l units,
a_0 = flattened input); the rule adds the output layer W_out (C x d_L), b_out. Per batch of B:

    logits = a_L W_out^T + b_out                         (B, C)
    e      = softmax(logits) - onehot(y)                  (B, C)   output error (CE gradient x B)
    dW_out = e^T a_L / B,   db_out = mean_b e             (C, d_L), (C,)   its true gradient
    delta_l = (e B_l) * relu'(z_l)                        (B, C) x (C, d_l) -> (B, d_l)
    dW_l   = delta_l^T a_{l-1} / B,  db_l = mean_b delta_l   (d_l, d_{l-1}), (d_l,)

B_l (C x d_l) is a fixed random feedback matrix drawn once from the rule's generator and kept as
a buffer (so it is checkpointed). relu'(z_l) is the boolean mask a_l > 0, taken from a_l, which
is stored anyway as the next layer's input: no float copy of z_l is kept. The hidden updates are
computed from the top layer down and each a_l is dropped once used, so the stored activations
shrink as backprop's do during its backward pass (the updates are independent, so the order
changes nothing else). Every update is an
explicit matmul under ``torch.no_grad()``; the results are written to ``.grad`` and the
optimizer steps. No autograd backward call is made
(``reverse_ad = "none"``), no forward weight is ever transposed into an update (no weight
transport), and every hidden layer's update uses only the broadcast output error: no layer waits
for a backward pass through the layers above (it does wait for the forward pass to reach the
output, i.e. DFA is still update-locked in Jaderberg et al.'s sense).

Choices and deviations:
  * Optimizer: Adam (lr 1e-4) by default. Nøkland trained with plain SGD-type updates; we use the
    toolkit's shared Adam so DFA and its backprop twin differ only in the gradient they follow.
    ``optimizer = "sgd"`` gives the paper's plain update.
  * Feedback matrices: B_l ~ U(-s/sqrt(C), s/sqrt(C)) with s = ``feedback_scale`` (our choice
    of distribution and scale). Under Adam the scale of B_l cancels (per-parameter
    normalisation), so only its direction matters; under SGD it scales the hidden updates.
  * No dropout (the paper's 1.45% MNIST result used dropout); the bodies here have none.
  * Native network mlp_2x1000, as the MLP rules of the benchmark study (Nøkland used tanh nets
    of 800-unit layers; see algorithms-more.md 7).

The reported training loss is the cross-entropy of the output layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bpfree.rules.base import Batch, Rule, RuleInfo, register_rule
from bpfree.rules.toolkit import (
    FixedRandom,
    OptimizerSettings,
    dense_activations,
    output_error,
    positive,
    relu_mask,
    set_linear_grad,
    suggest_optimizer,
)


@dataclass(frozen=True)
class DFAHparams(OptimizerSettings):
    # Adam, batch 128 as the BP baseline and MF; no weight decay (Nøkland 2016)
    lr: float = positive(1e-4)  # Adam; DFA tolerates smaller steps than BP (choice, see card)
    feedback_scale: float = positive(1.0)  # B_l ~ U(-s/sqrt(C), s/sqrt(C)); cancels under Adam

    @classmethod
    def suggest(cls, trial: Any) -> DFAHparams:
        # Same lr / weight-decay / batch ranges as the BP baseline, so both get the same budget
        # over comparable spaces; DFA's usable lr sits at the low end of it.
        return cls(**suggest_optimizer(trial, lr=(1e-5, 1e-2)))


@register_rule
class DirectFeedbackAlignment(Rule):
    info = RuleInfo(
        name="dfa",
        title="Direct Feedback Alignment (output error through fixed random matrices)",
        citation="Nøkland 2016, NeurIPS, arXiv 1609.01596",
        reverse_ad="none",
        backward_locking=False,
        weight_transport=False,
        forward_passes_per_step=1,
        families=("mlp",),
        native={"*": "mlp_2x1000"},
        pipeline_note="update-locked: every layer's update needs the error at the output of the "
        "same batch, so a stage would wait for the last (no overlap) or use a stale error; "
        "neither is offered yet",
    )
    Hparams = DFAHparams
    hp: DFAHparams

    def build(self) -> None:
        assert self.model is not None and self.generator is not None
        c = self.num_classes
        self.head = nn.Linear(self.model.out_dim, c)  # W_out (C, d_L)
        self.modules["head"] = self.head
        bound = self.hp.feedback_scale / math.sqrt(c)
        self.feedback = FixedRandom([(c, d) for d in self.model.block_dims], self.generator, bound)
        self.modules["feedback"] = self.feedback
        self.opt = self.hp.optimizer_for(self.modules.parameters())

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    @torch.no_grad()
    def train_step(self, batch: Batch) -> torch.Tensor:
        assert self.model is not None
        self.opt.zero_grad(set_to_none=True)  # before the forward: no stale gradient in the peak
        acts = dense_activations(self.model, batch.x)  # a_0 .. a_L, each (B, d_l)
        logits = self.head(acts[-1])  # (B, C)
        loss = F.cross_entropy(logits, batch.y)
        e = output_error(logits, batch.y)  # (B, C)
        set_linear_grad(self.head, e, acts[-1])  # the output layer's true gradient
        for k in reversed(range(len(self.model.blocks))):  # from the top, freeing as it goes
            a = acts.pop()  # a_l: its mask is all the update needs from it
            # (B, C) x (C, d_l) * relu'(z_l), the mask read off a_l
            delta = (e @ self.feedback[k]).mul_(relu_mask(a))  # in place: one (B, d_l) buffer
            set_linear_grad(self.model.blocks[k].linear, delta, acts[-1])
        self.opt.step()
        return loss

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        return self.head(self.model(x))
