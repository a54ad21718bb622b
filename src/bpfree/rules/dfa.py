"""Direct Feedback Alignment (DFA) — Nøkland 2016, arXiv 1609.01596.

The model body is L hidden layers a_l = relu(z_l), z_l = a_{l-1} W_l^T + b_l (d_l units,
a_0 = flattened input); the rule adds the output layer W_out (C x d_L), b_out. Per batch of B:

    logits = a_L W_out^T + b_out                         (B, C)
    e      = softmax(logits) - onehot(y)                  (B, C)   output error (CE gradient x B)
    dW_out = e^T a_L / B,   db_out = mean_b e             (C, d_L), (C,)   its true gradient
    delta_l = (e B_l) * relu'(z_l)                        (B, C) x (C, d_l) -> (B, d_l)
    dW_l   = delta_l^T a_{l-1} / B,  db_l = mean_b delta_l   (d_l, d_{l-1}), (d_l,)

B_l (C x d_l) is a fixed random feedback matrix drawn once from the rule's generator and kept as
a buffer (so it is checkpointed). Every update is an explicit matmul under ``torch.no_grad()``;
the results are written to ``.grad`` and the optimizer steps. No autograd backward call is made
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

The reported training loss is the cross-entropy of the output layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bpfree.rules.base import Batch, Hparams, Rule, RuleInfo, at_least, nonnegative, positive
from bpfree.rules.bp import make_optimizer


@dataclass(frozen=True)
class DFAHparams(Hparams):
    batch_size: int = at_least(128, 1)  # as the BP baseline and MF (Gong et al. 2025)
    lr: float = positive(1e-4)  # Adam; DFA tolerates smaller steps than BP (choice, see card)
    weight_decay: float = nonnegative(0.0)  # Nøkland 2016 uses no weight decay
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = nonnegative(0.9)  # only for sgd
    feedback_scale: float = positive(1.0)  # B_l ~ U(-s/sqrt(C), s/sqrt(C)); cancels under Adam

    @classmethod
    def suggest(cls, trial: Any) -> DFAHparams:
        # Same lr / weight-decay / batch ranges as the BP baseline, so both get the same budget
        # over comparable spaces; DFA's usable lr sits at the low end of it.
        return cls(
            lr=trial.suggest_float("lr", 1e-5, 1e-2, log=True),
            weight_decay=trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True),
            batch_size=trial.suggest_categorical("batch_size", [64, 128, 256]),
        )


class FeedbackMatrices(nn.Module):
    """Fixed random matrices B_k (C x d_k), stored as buffers (checkpointed, never trained)."""

    def __init__(
        self, num_classes: int, dims: list[int], generator: torch.Generator, scale: float = 1.0
    ) -> None:
        super().__init__()
        bound = scale / math.sqrt(num_classes)
        self.count = len(dims)
        for k, d in enumerate(dims):
            u = torch.rand(num_classes, d, generator=generator, device=generator.device)
            self.register_buffer(f"b{k}", (2 * u - 1) * bound)  # (C, d_k) ~ U(-bound, bound)

    def __getitem__(self, k: int) -> torch.Tensor:
        return getattr(self, f"b{k}")


def output_error(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """e = softmax(logits) - onehot(y), (B, C): the gradient of the summed cross-entropy."""
    e = torch.softmax(logits, dim=1)
    e[torch.arange(y.shape[0], device=y.device), y] -= 1.0
    return e


def set_linear_grad(layer: nn.Linear, delta: torch.Tensor, inputs: torch.Tensor) -> None:
    """layer.weight.grad = delta^T inputs / B and layer.bias.grad = mean(delta), explicitly."""
    n = delta.shape[0]
    layer.weight.grad = delta.t() @ inputs / n  # (d_out, B) x (B, d_in) -> (d_out, d_in)
    if layer.bias is not None:
        layer.bias.grad = delta.mean(dim=0)  # (d_out,)


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
    )
    Hparams = DFAHparams
    hp: DFAHparams

    def build(self) -> None:
        assert self.model is not None and self.generator is not None
        self.head = nn.Linear(self.model.out_dim, self.num_classes)  # W_out (C, d_L)
        self.modules["head"] = self.head
        self.feedback = FeedbackMatrices(
            self.num_classes, self.model.block_dims, self.generator, self.hp.feedback_scale
        )
        self.modules["feedback"] = self.feedback
        hp = self.hp
        self.opt = make_optimizer(
            hp.optimizer, self.modules.parameters(), hp.lr, hp.weight_decay, hp.momentum
        )

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    @torch.no_grad()
    def train_step(self, batch: Batch) -> torch.Tensor:
        assert self.model is not None
        a = batch.x.flatten(1)  # a_0 (B, d_0)
        inputs, pre = [], []
        for block in self.model.blocks:
            z = block.linear(a)  # z_l (B, d_l)
            inputs.append(a)
            pre.append(z)
            a = torch.relu(z)  # a_l
        logits = self.head(a)  # (B, C)
        loss = F.cross_entropy(logits, batch.y)
        e = output_error(logits, batch.y)  # (B, C)
        self.opt.zero_grad(set_to_none=True)
        set_linear_grad(self.head, e, a)  # the output layer's true gradient
        for k, block in enumerate(self.model.blocks):
            delta = (e @ self.feedback[k]) * (pre[k] > 0)  # (B, C) x (C, d_l) * relu'(z_l)
            set_linear_grad(block.linear, delta, inputs[k])
        self.opt.step()
        return loss

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        return self.head(self.model(x))
