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

Pipeline stages (``--stages K``): the last stage computes e and sends it (B x C floats) straight to
every other stage; no backward pass runs through the stages. ``pipeline_error = "wait"`` (default):
a stage applies batch i's error before it forwards batch i+1, which is the single-process algorithm
bit for bit (a test checks it); the stages overlap only in their updates (the last stage sends e
before it updates its own layers). ``"stale"``: stage s forwards K-1-s further batches before batch
i's error arrives, so the stages overlap, but its forward weights are K-1-s updates behind (the
update of batch i is still computed from batch i's own activations and error, and applied late);
the stage keeps K-s batches' activations. Every batch's update is applied before the epoch ends.
With one process the setting changes nothing.

The reported training loss is the cross-entropy of the output layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

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
    refuse_dropout,
    relu_mask,
    set_linear_grad,
    suggest_optimizer,
)


@dataclass(frozen=True)
class DFAHparams(OptimizerSettings):
    # Adam, batch 128 as the BP baseline and MF; no weight decay (Nøkland 2016)
    lr: float = positive(1e-4)  # Adam; DFA tolerates smaller steps than BP (choice, see card)
    feedback_scale: float = positive(1.0)  # B_l ~ U(-s/sqrt(C), s/sqrt(C)); cancels under Adam
    # --stages K: "wait" (a stage updates on batch i's error before it forwards batch i+1: the
    # single-process algorithm, no overlap) or "stale" (stage s forwards K-1-s more batches
    # before batch i's error arrives: overlap, its forward weights K-1-s updates behind)
    pipeline_error: Literal["wait", "stale"] = "wait"

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
        pipeline="feedback",
        pipeline_note="update-locked: a stage's update waits for the error of the same batch "
        "from the last stage (pipeline_error=wait), or uses it late (=stale)",
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
        e, loss = self._output_error(acts[-1], batch.y)
        self._hidden_grads(0, acts, e)
        self.opt.step()
        return loss

    def _output_error(
        self, top: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(e, loss) of the output layer on a_L; sets its true gradient."""
        logits = self.head(top)  # (B, C)
        loss = F.cross_entropy(logits, y)
        e = output_error(logits, y)  # (B, C)
        set_linear_grad(self.head, e, top)  # the output layer's true gradient
        return e, loss

    def _hidden_grads(self, start: int, acts: list[torch.Tensor], e: torch.Tensor) -> None:
        """The gradients of layers start.. from ``acts`` = [their input, a_start+1, ..]."""
        assert self.model is not None
        for k in reversed(range(start, start + len(acts) - 1)):  # from the top, freeing
            a = acts.pop()  # a_l: its mask is all the update needs from it
            # (B, C) x (C, d_l) * relu'(z_l), the mask read off a_l
            delta = (e @ self.feedback[k]).mul_(relu_mask(a))  # in place: one (B, d_l) buffer
            set_linear_grad(self.model.blocks[k].linear, delta, acts[-1])

    # ---- pipeline stages (engine/pipeline.py, kind "feedback") ---------------------------------
    def pipeline_units(self) -> list[list[nn.Module | torch.Tensor]]:
        assert self.model is not None
        refuse_dropout(self.model)
        units: list[list[nn.Module | torch.Tensor]] = [
            [block, self.feedback[k]] for k, block in enumerate(self.model.blocks)
        ]
        units[-1].append(self.head)
        return units

    def pipeline_lag(self, stage: int, stages: int) -> int:
        """Batches a stage forwards before it applies an earlier batch's error (card)."""
        return stages - 1 - stage if self.hp.pipeline_error == "stale" else 0

    def pipeline_input(self, batch: Batch) -> torch.Tensor:
        return batch.x.flatten(1)

    @torch.no_grad()
    def pipeline_forward_span(
        self, start: int, stop: int, h: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Layers start..stop-1 forward: (their output, [h, a_start+1, .., a_stop])."""
        assert self.model is not None
        acts = [h]
        for block in self.model.blocks[start:stop]:
            acts.append(torch.relu(block.linear(acts[-1])))
        return acts[-1], acts

    @torch.no_grad()
    def pipeline_top(
        self, start: int, acts: list[torch.Tensor], batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The last stage: the output error (sent to the others before this stage's own layers
        update) and the output layer's gradient."""
        self.opt.zero_grad(set_to_none=True)
        return self._output_error(acts[-1], batch.y)

    @torch.no_grad()
    def pipeline_update(
        self, start: int, acts: list[torch.Tensor], e: torch.Tensor, top: bool = False
    ) -> None:
        """A stage's layers update from the batch's error (``top``: the last stage, whose
        output layer's gradient pipeline_top has set)."""
        if not top:
            self.opt.zero_grad(set_to_none=True)
        self._hidden_grads(start, acts, e)
        self.opt.step()  # only the tensors with gradients: this stage's

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        return self.head(self.model(x))
