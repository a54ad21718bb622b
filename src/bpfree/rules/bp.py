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
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bpfree.errors import ConfigError
from bpfree.rules.base import Batch, Rule, RuleInfo, register_rule
from bpfree.rules.toolkit import OptimizerName, OptimizerSettings, nonnegative, suggest_optimizer


@dataclass(frozen=True)
class BPHparams(OptimizerSettings):
    # batch 128 as Mono-Forward (Gong et al. 2025); lr 1e-3, Adam's default (Kingma & Ba 2015)
    weight_decay: float = nonnegative(0.01)  # torch.optim.AdamW default (Loshchilov & Hutter)
    optimizer: OptimizerName = "adamw"

    @classmethod
    def suggest(cls, trial: Any) -> BPHparams:
        # Ranges span the step sizes used for these nets in the literature (1e-4 .. 1e-2) and
        # weight decay from none to strong; batch sizes around the rules' native 100-128.
        return cls(**suggest_optimizer(trial))


@register_rule
class Backprop(Rule):
    info = RuleInfo(
        name="bp",
        title="Backpropagation (end-to-end cross-entropy)",
        citation="Rumelhart, Hinton & Williams 1986, Nature 323:533",
        reverse_ad="global",
        backward_locking=True,
        weight_transport=True,
        forward_passes_per_step=1,
        families=("mlp", "cnn", "text", "noprop"),
        # as a twin it trains the rule's network instead
        native={"*": "mlp_2x1000", "text": "minilm_l6"},
        baseline=True,
        trainable=("all", "head", "lora"),  # frozen parameters get no gradient, so no step
        pipeline="backprop",
        pipeline_note="blocks in order, the head with the last (torch.distributed.pipelining)",
        data_parallel=True,
    )
    Hparams = BPHparams
    hp: BPHparams

    def build(self) -> None:
        assert self.model is not None
        self.head = nn.Linear(self.model.out_dim, self.num_classes, bias=self.model.bias)
        self.modules["head"] = self.head
        self.opt = self.hp.optimizer_for(self.modules.parameters())

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def train_step(self, batch: Batch) -> torch.Tensor:
        assert self.model is not None
        self.opt.zero_grad(set_to_none=True)  # before the forward: no stale gradient in the peak
        logits = self.head(self.model(batch.x))  # (B, C)
        loss = F.cross_entropy(logits, batch.y)
        loss.backward()
        self.opt.step()
        return loss.detach()

    # ---- pipeline stages: one block a unit, the head with the last -------------------------
    def pipeline_units(self) -> list[list[nn.Module | torch.Tensor]]:
        assert self.model is not None
        if self.model.family not in ("mlp", "cnn"):
            raise ConfigError(f"bp pipelines mlp and cnn bodies, not {self.model.family!r}")
        units: list[list[nn.Module | torch.Tensor]] = [[b] for b in self.model.blocks]
        units[-1].append(self.head)
        return units

    def pipeline_forward(self, unit: int, h: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        h = self.model.blocks[unit](h)
        return self.head(h.flatten(1)) if unit == len(self.model.blocks) - 1 else h

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        return self.head(self.model(x))
