"""Feedback Alignment (FA) — Lillicrap, Cownden, Tweed & Akerman 2016, Nature Communications
7:13276, "Random synaptic feedback weights support error backpropagation for deep learning".

The model body is L hidden layers a_l = relu(z_l), z_l = a_{l-1} W_l^T + b_l (d_l units,
a_0 = flattened input); the rule adds the output layer W_{L+1} = W_out (C x d_L), b_out. The
error travels down the stack layer by layer, as in backprop, but through fixed random matrices
B_{l+1} of the transposed shape of the next layer's weights (d_l x d_{l+1}) instead of
W_{l+1}^T. Per batch of B samples (row-vector convention):

    logits    = a_L W_out^T + b_out                          (B, C)
    delta_L+1 = softmax(logits) - onehot(y)                  (B, C)  output error
    delta_l   = (delta_{l+1} B_{l+1}^T) * relu'(z_l)         (B, d_{l+1}) x (d_{l+1}, d_l)
    dW_l      = delta_l^T a_{l-1} / B,  db_l = mean_b delta_l          l = L+1 .. 1

The output layer's update is its true gradient. With B_{l+1} = W_{l+1}^T this is exactly
backprop's gradient (``tests/test_rule_math.py`` checks it). B_{l+1} is drawn once from the
rule's generator and kept as a buffer (checkpointed, never trained); relu'(z_l) is the boolean
mask a_l > 0 read off a_l, which is kept anyway as the input of layer l+1's update. Every update
is an explicit matmul under ``torch.no_grad()`` written into ``.grad``; the optimizer steps.
No autograd call is made (``reverse_ad = "none"``) and no forward weight is used to carry
errors (no weight transport), but each layer waits for the error of the layer above
(``backward_locking = True``: the sequential backward sweep remains, unlike DFA).

Choices and deviations:
  * Feedback matrices: B_{l+1} ~ U(-s/sqrt(d_l), s/sqrt(d_l)), the bound PyTorch's default
    init gives the forward weight W_{l+1} it replaces (fan-in d_l), s = ``feedback_scale``.
    Lillicrap et al. drew B from a uniform distribution of a range they tuned per task.
  * Optimizer: Adam, lr 1e-3 (Adam's default) where the paper used plain SGD; the toolkit's
    shared optimizer settings let FA and its backprop twin differ only in the gradient they
    follow. ``optimizer = "sgd"`` gives the paper's plain update.
  * Native network mlp_2x1000, as the other MLP rules here (the paper's MNIST net was
    784-1000-10, one hidden layer of tanh units).

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
class FAHparams(OptimizerSettings):
    # Adam, lr 1e-3, batch 128, no weight decay: the toolkit's defaults (see the card)
    feedback_scale: float = positive(1.0)  # B ~ U(-s/sqrt(d_l), s/sqrt(d_l)); cancels under Adam

    @classmethod
    def suggest(cls, trial: Any) -> FAHparams:
        # The backprop baseline's lr / weight-decay / batch ranges: comparable spaces.
        return cls(**suggest_optimizer(trial))


@register_rule
class FeedbackAlignment(Rule):
    info = RuleInfo(
        name="fa",
        title="Feedback Alignment (layer-by-layer error through fixed random matrices)",
        citation="Lillicrap et al. 2016, Nature Communications 7:13276",
        reverse_ad="none",
        backward_locking=True,
        weight_transport=False,
        forward_passes_per_step=1,
        families=("mlp",),
        native={"*": "mlp_2x1000"},
    )
    Hparams = FAHparams
    hp: FAHparams

    def build(self) -> None:
        assert self.model is not None and self.generator is not None
        dims = [*self.model.block_dims, self.num_classes]  # d_1 .. d_L, C
        self.head = nn.Linear(self.model.out_dim, self.num_classes)  # W_out (C, d_L)
        self.modules["head"] = self.head
        # B_{l+1} (d_l, d_{l+1}) for l = 1..L: the transposed shape of W_{l+1}
        shapes = [(dims[i], dims[i + 1]) for i in range(len(dims) - 1)]
        bounds = [self.hp.feedback_scale / math.sqrt(d_in) for d_in, _ in shapes]
        self.feedback = FixedRandom(shapes, self.generator, bounds)
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
        delta = output_error(logits, batch.y)  # delta_{L+1} (B, C)
        set_linear_grad(self.head, delta, acts[-1])  # the output layer's true gradient
        for k in reversed(range(len(self.model.blocks))):  # layer l = k + 1, from the top
            a = acts.pop()  # a_l (B, d_l), no longer needed once its mask is read
            # (B, d_{l+1}) x (d_{l+1}, d_l) * relu'(z_l), the mask read off a_l
            delta = (delta @ self.feedback[k].t()).mul_(relu_mask(a))  # in place
            set_linear_grad(self.model.blocks[k].linear, delta, acts[-1])
        self.opt.step()
        return loss

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        return self.head(self.model(x))
