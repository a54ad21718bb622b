"""Backprop (BP): the baseline every other rule is compared with.

Ordinary end-to-end training of the *same* body the rule under test uses, plus one linear head
``W_out`` of shape (C x d_L) on the last block's flattened output:

    logits = W_out h_L(x) + b_out            (B, C)
    loss   = cross_entropy(logits, y)         (mean over the batch)

and every parameter steps on the gradient of that single loss (reverse-mode AD through the
whole network). AdamW by default; the defaults are PyTorch's AdamW defaults with lr 1e-3,
a standard choice for these MLP/CNN baselines (the benchmark study tunes it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bpfree.rules.base import Batch, Hparams, Rule, RuleInfo, at_least, nonnegative, positive


@dataclass(frozen=True)
class BPHparams(Hparams):
    batch_size: int = at_least(128, 1)  # same as Mono-Forward's batch (Gong et al. 2025)
    lr: float = positive(1e-3)  # Adam's default step size (Kingma & Ba 2015)
    weight_decay: float = nonnegative(0.01)  # torch.optim.AdamW default (Loshchilov & Hutter)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    momentum: float = nonnegative(0.9)  # only for sgd

    @classmethod
    def suggest(cls, trial: Any) -> BPHparams:
        # Ranges span the step sizes used for these nets in the literature (1e-4 .. 1e-2) and
        # weight decay from none to strong; batch sizes around the rules' native 100-128.
        return cls(
            lr=trial.suggest_float("lr", 1e-4, 1e-2, log=True),
            weight_decay=trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True),
            batch_size=trial.suggest_categorical("batch_size", [64, 128, 256]),
        )


def make_optimizer(
    name: str, params: Any, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """The optimizers bpfree's rules share: Adam/AdamW or SGD with momentum.

    Adam and AdamW use PyTorch's fused kernels (CPU and CUDA): the same update as the default
    multi-tensor version, in one pass over memory. On 2 CPU cores it is ~3x faster for the
    1.8M parameters of mlp_2x1000, an overhead every rule would otherwise pay per step.
    """
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)


class Backprop(Rule):
    info = RuleInfo(
        name="bp",
        title="Backpropagation (end-to-end cross-entropy)",
        citation="Rumelhart, Hinton & Williams 1986, Nature 323:533",
        reverse_ad="global",
        backward_locking=True,
        weight_transport=True,
        forward_passes_per_step=1,
        families=("mlp", "cnn"),
    )
    Hparams = BPHparams
    hp: BPHparams

    def build(self) -> None:
        assert self.model is not None
        self.head = nn.Linear(self.model.out_dim, self.num_classes)
        self.modules["head"] = self.head
        hp = self.hp
        self.opt = make_optimizer(
            hp.optimizer, self.modules.parameters(), hp.lr, hp.weight_decay, hp.momentum
        )

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def train_step(self, batch: Batch) -> torch.Tensor:
        assert self.model is not None
        logits = self.head(self.model(batch.x))  # (B, C)
        loss = F.cross_entropy(logits, batch.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        return self.head(self.model(x))
