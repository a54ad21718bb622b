"""Mono-Forward (MF) — Gong, Li & Abdulla 2025, arXiv 2501.09238.

Each hidden layer l (a_l = relu(W_l a_{l-1} + b_l), d_l units) owns a projection M_l (C x d_l):

    G_l = a_l M_l^T                       (B, d_l) x (d_l, C) -> (B, C)   layer-l class scores
    L_l = cross_entropy(G_l, y)

a_{l-1} is detached, so the gradient of L_l reaches only W_l, b_l and M_l (reverse-mode AD
*within* the layer, never across layers: no backward locking, no weight transport).

Schedules:
  * ``simultaneous`` (default, the paper's algorithm): one forward pass per batch; every layer
    steps on its own loss as the batch flows up. Layer k's loss is back-propagated (within layer
    k) as soon as layer k has run, and its graph freed before layer k+1 runs
    (:func:`~bpfree.rules.toolkit.layer_by_layer`), so activation memory does not grow with
    depth; then one Adam step over all layers (the parameter sets are disjoint, so this is each
    layer's own update).
  * ``sequential`` (what one public benchmark did): layer 1 with M_1 trains to convergence
    (early stopping on the validation accuracy of G_1), is frozen, then layer 2, and so on;
    one trainer phase per layer.

Pipelined (``--stages K``, the simultaneous schedule): a layer with its projection is a unit;
each stage runs its layers' steps on a batch as soon as it arrives and sends the detached output
on, so every layer still sees the output of the layer below from before that layer's update of
the same batch: the parameters equal the single-process run's (tests/test_parallel.py).

Inference: argmax of the last layer's scores G_L (default) or, with ``predict_from = "sum"``,
of sum_l softmax(G_l). No projection M_0 on the raw input is made (useless for inference).

The reported training loss is the mean of the layers' local losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from bpfree.errors import ConfigError
from bpfree.rules.base import Batch, Phase, Rule, RuleInfo, register_rule
from bpfree.rules.toolkit import OptimizerSettings, layer_by_layer, local_heads, suggest_optimizer


@dataclass(frozen=True)
class MFHparams(OptimizerSettings):
    # Gong et al. 2025: plain Adam, batch 128; lr 1e-3 (published tuned values 4e-4 for
    # Fashion-MNIST .. 1.6e-3 for MNIST), no weight decay
    schedule: Literal["simultaneous", "sequential"] = "simultaneous"
    predict_from: Literal["last", "sum"] = "last"

    @classmethod
    def suggest(cls, trial: Any) -> MFHparams:
        # lr range brackets the published tuned values (4e-4 .. 1.6e-3) by ~4x each side.
        return cls(**suggest_optimizer(trial))


@register_rule
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
        native={"grayscale": "mlp_2x1000", "color": "mlp_3x2000"},  # Gong et al. 2025
        pipeline="local",
        pipeline_note="the simultaneous schedule pipelines; the sequential one trains one layer",
        data_parallel=True,
    )
    Hparams = MFHparams
    hp: MFHparams

    def build(self) -> None:
        assert self.model is not None
        self.projections = local_heads(self.model.block_dims, self.num_classes, bias=False)
        self.modules["projections"] = self.projections
        self.active = len(self.projections) - 1  # layer whose scores predict
        if self.hp.schedule == "simultaneous":
            self.opt = self.hp.optimizer_for(self.modules.parameters())

    def phases(self) -> list[Phase]:
        assert self.model is not None
        if self.hp.schedule == "simultaneous":
            return [Phase("train")]
        return [Phase(f"layer{i + 1}", i) for i in range(len(self.model.blocks))]

    def begin_phase(self, phase: Phase, train_x: torch.Tensor, train_y: torch.Tensor) -> None:
        if self.hp.schedule == "sequential":
            assert self.model is not None
            self.active = phase.index
            layer = [
                *self.model.blocks[phase.index].parameters(),
                *self.projections[phase.index].parameters(),
            ]
            self.opt = self.hp.optimizer_for(layer)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt} if hasattr(self, "opt") else {}

    def extra_state(self) -> dict[str, Any]:
        return {"active": self.active}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.active = int(state.get("active", self.active))

    def train_step(self, batch: Batch) -> torch.Tensor:
        assert self.model is not None
        blocks, y = self.model.blocks, batch.y
        self.opt.zero_grad(set_to_none=True)  # before the forward: no stale gradient in the peak
        if self.hp.schedule == "sequential":
            h = batch.x
            with torch.no_grad():  # frozen layers below the one in training
                for block in blocks[: self.active]:
                    h = block(h)
            k = self.active
            _, losses = layer_by_layer(
                h, [blocks[k]], lambda _, a: F.cross_entropy(self.projections[k](a), y)
            )
        else:
            _, losses = layer_by_layer(
                batch.x, list(blocks), lambda k, a: F.cross_entropy(self.projections[k](a), y)
            )
        self.opt.step()
        total = torch.zeros((), device=y.device)
        for loss in losses:
            total = total + loss
        return total / len(losses)

    # ---- pipeline stages: a layer with its projection is a unit ------------------------------
    def pipeline_units(self) -> list[list[torch.nn.Module | torch.Tensor]]:
        assert self.model is not None
        if self.hp.schedule != "simultaneous":
            raise ConfigError(f"mf with schedule={self.hp.schedule!r}: {self.info.pipeline_note}")
        return [[b, p] for b, p in zip(self.model.blocks, self.projections, strict=True)]

    def pipeline_input(self, batch: Batch) -> torch.Tensor:
        return batch.x

    def pipeline_step(
        self, start: int, stop: int, h: torch.Tensor, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layers start..stop-1 as in train_step: each sees the output of the layer below from
        before that layer's update of this batch, so a pipeline computes what one process does."""
        assert self.model is not None
        blocks = list(self.model.blocks[start:stop])
        self.opt.zero_grad(set_to_none=True)
        out, losses = layer_by_layer(
            h, blocks, lambda k, a: F.cross_entropy(self.projections[start + k](a), batch.y)
        )
        self.opt.step()  # steps only the parameters with gradients: this stage's
        total = torch.zeros((), device=batch.y.device)
        for loss in losses:
            total = total + loss
        return out, total / len(self.model.blocks)

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
