"""Mono-Forward (MF) — Gong, Li & Abdulla 2025, arXiv 2501.09238.

Each hidden layer l (a_l = relu(W_l a_{l-1} + b_l), d_l units) owns a projection M_l (C x d_l):

    G_l = a_l M_l^T                       (B, d_l) x (d_l, C) -> (B, C)   layer-l class scores
    L_l = cross_entropy(G_l, y)

a_{l-1} is detached, so the gradient of L_l reaches only W_l, b_l and M_l (reverse-mode AD
*within* the layer, never across layers: no backward locking, no weight transport).

Schedules:
  * ``simultaneous`` (default, the paper's algorithm): one forward pass per batch; every layer
    steps on its own loss as the batch flows up. Implemented as one Adam step on sum_l L_l —
    because every layer input is detached, d(sum_l L_l)/d(theta_l) = dL_l/d(theta_l) exactly.
  * ``sequential`` (what one public benchmark did): layer 1 with M_1 trains to convergence
    (early stopping on the validation accuracy of G_1), is frozen, then layer 2, and so on;
    one trainer phase per layer.

Inference: argmax of the last layer's scores G_L (default) or, with ``predict_from = "sum"``,
of sum_l softmax(G_l). No projection M_0 on the raw input is made (useless for inference).

The reported training loss is the mean of the layers' local losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bpfree.rules.base import Batch, Hparams, Phase, Rule, RuleInfo, at_least, nonnegative, positive
from bpfree.rules.bp import make_optimizer


@dataclass(frozen=True)
class MFHparams(Hparams):
    batch_size: int = at_least(128, 1)  # Gong et al. 2025 use batch 128
    lr: float = positive(1e-3)  # Adam; published tuned values 4e-4 (F-MNIST) .. 1.6e-3 (MNIST)
    weight_decay: float = nonnegative(0.0)  # the paper uses plain Adam
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"  # the paper's optimizer
    schedule: Literal["simultaneous", "sequential"] = "simultaneous"
    predict_from: Literal["last", "sum"] = "last"

    @classmethod
    def suggest(cls, trial: Any) -> MFHparams:
        # lr range brackets the published tuned values (4e-4 .. 1.6e-3) by ~4x each side.
        return cls(
            lr=trial.suggest_float("lr", 1e-4, 1e-2, log=True),
            weight_decay=trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True),
            batch_size=trial.suggest_categorical("batch_size", [64, 128, 256]),
        )


class MonoForward(Rule):
    info = RuleInfo(
        name="mf",
        title="Mono-Forward (local projection losses)",
        citation="Gong, Li & Abdulla 2025, arXiv 2501.09238",
        reverse_ad="within_block",
        backward_locking=False,
        weight_transport=False,
        forward_passes_per_step=1,
        families=("mlp",),
    )
    Hparams = MFHparams
    hp: MFHparams

    def build(self) -> None:
        assert self.model is not None
        self.projections = nn.ModuleList(
            nn.Linear(d, self.num_classes, bias=False) for d in self.model.block_dims
        )
        self.modules["projections"] = self.projections
        self.active = len(self.projections) - 1  # layer whose scores predict
        if self.hp.schedule == "simultaneous":
            self.opt = self._optimizer(self.modules.parameters())

    def _optimizer(self, params: Any) -> torch.optim.Optimizer:
        return make_optimizer(self.hp.optimizer, params, self.hp.lr, self.hp.weight_decay)

    def phases(self) -> list[Phase]:
        if self.hp.schedule == "simultaneous":
            return [Phase("train")]
        return [Phase(f"layer{i + 1}", i) for i in range(len(self.projections))]

    def begin_phase(self, phase: Phase, train_x: torch.Tensor, train_y: torch.Tensor) -> None:
        if self.hp.schedule == "sequential":
            assert self.model is not None
            self.active = phase.index
            layer = [
                *self.model.blocks[phase.index].parameters(),
                *self.projections[phase.index].parameters(),
            ]
            self.opt = self._optimizer(layer)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt} if hasattr(self, "opt") else {}

    def extra_state(self) -> dict[str, Any]:
        return {"active": self.active}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.active = int(state.get("active", self.active))

    def train_step(self, batch: Batch) -> torch.Tensor:
        assert self.model is not None
        h = batch.x
        if self.hp.schedule == "sequential":
            with torch.no_grad():  # frozen layers below the one in training
                for block in self.model.blocks[: self.active]:
                    h = block(h)
            a = self.model.blocks[self.active](h)
            total = F.cross_entropy(self.projections[self.active](a), batch.y)
            count = 1
        else:
            total = torch.zeros((), device=h.device)
            for block, proj in zip(self.model.blocks, self.projections, strict=True):
                a = block(h.detach())  # detached input: no gradient crosses layers
                total = total + F.cross_entropy(proj(a), batch.y)
                h = a
            count = len(self.projections)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        return total.detach() / count

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        h, out = x, None
        for i, (block, proj) in enumerate(zip(self.model.blocks, self.projections, strict=True)):
            if i > self.active:
                break
            h = block(h)
            if self.hp.predict_from == "sum":
                p = torch.softmax(proj(h), dim=1)
                out = p if out is None else out + p
            elif i == self.active:
                out = proj(h)
        assert out is not None
        # Summed probabilities are returned as log-probabilities so argmax and CE both make sense.
        return out.log() if self.hp.predict_from == "sum" else out
