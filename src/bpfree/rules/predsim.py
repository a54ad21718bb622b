"""Local error signals: pred, sim and predsim — Nøkland & Eidnes 2019, "Training Neural Networks
with Local Error Signals", ICML 2019, arXiv 1901.06656 (code: github.com/anokland/local-loss).

Every block k of the body learns from a loss of its own, on its own output, with its input
detached: no gradient crosses a block. Block k maps a_{k-1} (detached) to

    a_k = f_k(a_{k-1})      (B, d_k) for a DenseBlock, (B, c_k, s_k, s_k) for a ConvBlock

and owns two local heads (besides its own parameters theta_k):

  pred   y_hat_k = D_k pool_k(a_k).flatten() + e_k       D_k (C, p_k), e_k (C,)
         L_pred,k = cross_entropy(y_hat_k, y)
         D_k starts at zero (e_k keeps nn.Linear's init), as ``decoder_y`` in the code. For
         dense blocks pool_k is the identity (p_k = d_k). For conv blocks pool_k is an average
         pooling whose kernel doubles (height first, then width) until c_k * h * w <=
         ``dim_in_decoder`` or the kernel reaches s_k, padded so the output is ceil(s_k /
         kernel) wide (AvgPool2d, padding counted): the code's rule, kept exactly.
  sim    u_k = S_k a_k (dense: S_k (d_k, d_k), no bias) or conv3x3(a_k) (conv: c_k -> c_k,
         padding 1, no bias), then, for conv maps with c_k > 3 and s_k > 1, v_k = the
         per-channel standard deviation over space (unbiased) (B, c_k); otherwise v_k =
         u_k.flatten() (B, *).
         R(v)_ij = <v_i - mean(v_i), v_j - mean(v_j)> / (|v_i - mean(v_i)| |v_j - mean(v_j)|)
         (B, B): cosine similarity of the rows, each centred over its features (1e-8 added to
         the norms, clamped to [-1, 1]).
         L_sim,k = mean_ij (R(v_k)_ij - R(Y)_ij)^2, Y = onehot(y) (B, C), so R(Y)_ij is 1 for
         two samples of one class and -1/(C-1) otherwise.
  loss   ``predsim`` (default): L_k = (1 - beta) L_pred,k + beta L_sim,k, beta = 0.99;
         ``pred``: L_k = L_pred,k (no S_k); ``sim``: L_k = L_sim,k (no D_k).

Output (what ``predict`` returns): logits = W_out a_L.flatten() + b_out, W_out (C, d_L) starting
at zero, trained by cross-entropy on the detached last block output, scaled by (1 - beta) in the
predsim mode: the code's ``layer_out`` (``Net``) and its global optimizer, which sees only that
layer. The local heads D_k do not predict. (With Adam the 1 - beta scale hardly matters; with
``optimizer = "sgd"`` it shrinks the output layer's step too, as in the code.)

Optimizers: block k has its own (Adam, lr 5e-4: the code's default, used by its MLP and VGG8b
recipes; VGG11b (3x) uses 3e-4) over theta_k, D_k and S_k; the output layer has another.
``optimizers()`` returns them all (``block0`` .. ``block{L-1}``, ``out``), so all are
checkpointed and scheduled.

Reverse mode is used within a block only: L_k is back-propagated through block k and its heads
(``layer_by_layer``: block k's backward runs and its graph is freed before block k+1 runs, so
activation memory does not grow with depth; the sim loss's B x B matrices are the largest part
of it at width 64, batch 512), and the output loss through W_out alone. No backward locking, no
weight transport, one forward pass. As D_k starts at zero, the first step's pred gradient
reaches D_k and e_k only, not theta_k (the same in the code).

Choices and deviations:
  * The networks. The paper's MNIST MLP is 3 x 1024 with BatchNorm, dropout 0.1 and LeakyReLU
    (the predsim recipes); bpfree's DenseBlock is Linear -> ReLU with none of these, so
    ``mlp_3x1024`` is that MLP without them. On images, VGG8b (6 conv layers of 128-512
    channels and a 1024-unit hidden layer with local losses of their own; conv -> BN ->
    LeakyReLU, loss before the max-pool) is too large for a 2-core CPU machine; ``cnn_3block``
    (3 x conv3x3 -> ReLU -> maxpool -> BN, 32/128/512) is the VGG-style CNN it can train. Its
    local losses see the block output, *after* the pool and BatchNorm, and the output layer
    sits on the flattened last conv block (no hidden FC layer). The published numbers to set
    beside it (test error %, README of the code): MNIST MLP predsim 0.62 / pred 0.68 / sim 0.80
    (global backprop 0.75), VGG8b 0.31 (0.26); Fashion-MNIST MLP 8.54 (8.37), VGG8b 4.65
    (4.53); CIFAR-10 MLP 3 x 3000 30.93 (33.56), VGG8b 5.58 (5.99); 100-400 epochs, with
    random crops (padding 2 on MNIST and Fashion-MNIST, 4 on CIFAR-10) and, on Fashion-MNIST
    and CIFAR-10, horizontal flips. Compare cnn_3block with its backprop twin here, not with
    VGG8b.
  * ``dim_in_decoder`` defaults to 2048, the CIFAR-10 VGG8b recipe (the code's argparse
    default is 4096; its MNIST/Fashion-MNIST VGG8b recipes use 1024). It matters only for
    conv blocks. Square feature maps are assumed, as the code does.
  * The learning-rate decay (x0.25 at milestones) is not part of the rule: the framework's
    ``lr_cooldown`` option schedules every optimizer. The "bio" variant, the unsupervised
    losses (``alpha``) and the class-balanced batch sampler are not implemented.
  * The code steps each block's optimizer inside the forward, right after its backward; here
    all optimizers step after the last block. The update is the same: the parameter sets are
    disjoint and block k+1 reads block k's output computed before block k's step in both.

The reported training loss is the sum of the blocks' local losses and the output layer's loss
(the code's loss_local + loss_global).

Pipelined (``--stages K``): a block with its local heads is a unit (W_out goes with the last);
each stage steps its blocks' optimizers as soon as its blocks have run on a batch, as the
reference code does, and the parameters equal the single-process run's (tests/test_parallel.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from bpfree.errors import ConfigError
from bpfree.rules.base import Batch, Rule, RuleInfo, register_rule
from bpfree.rules.toolkit import (
    OptimizerSettings,
    at_least,
    in_range,
    layer_by_layer,
    positive,
    suggest_optimizer,
)

LossKind = Literal["predsim", "pred", "sim"]


@dataclass(frozen=True)
class PredSimHparams(OptimizerSettings):
    # Nøkland & Eidnes 2019 (code defaults and recipes): Adam, batch 128, no weight decay
    lr: float = positive(5e-4)  # --lr 5e-4: the code's default, its MLP and VGG8b recipes'
    loss: LossKind = "predsim"  # --loss-sup: pred, sim or predsim
    beta: float = in_range(0.99, 0.0, 1.0)  # --beta: the weight of sim in predsim
    dim_in_decoder: int = at_least(2048, 1)  # --dim-in-decoder of the CIFAR-10 VGG8b recipe

    @classmethod
    def suggest(cls, trial: Any) -> PredSimHparams:
        # The backprop baseline's space: its lr range (1e-4 .. 1e-2) brackets the paper's 5e-4.
        return cls(**suggest_optimizer(trial))


class PoolPlan(NamedTuple):
    """The average pooling in front of a conv block's local classifier (the code's rule)."""

    kernel: tuple[int, int]
    padding: tuple[int, int]
    features: int  # channels * pooled height * pooled width: D_k's input size


def pool_plan(channels: int, side: int, limit: int) -> PoolPlan:
    """Double the kernel (height first, then width) until channels * h * w <= ``limit`` or the
    kernel height reaches ``side``; pad so the output is ceil(side / kernel) wide."""
    kh = kw = 1
    oh = ow = side
    while channels * oh * ow > limit and kh < side:
        kh *= 2
        oh = math.ceil(side / kh)
        if channels * oh * ow > limit:
            kw *= 2
            ow = math.ceil(side / kw)
    padding = ((kh * (oh - side // kh)) // 2, (kw * (ow - side // kw)) // 2)
    return PoolPlan((kh, kw), padding, channels * oh * ow)


def similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    """(B, B) cosine similarities of the rows of x, each centred over its features. A feature
    map (B, c, h, w) with c > 3 and h > 1 is first reduced to its per-channel standard
    deviation over space (B, c); any other input is flattened."""
    if x.dim() == 4 and x.shape[1] > 3 and x.shape[2] > 1:
        x = x.flatten(2).std(dim=2)  # (B, c)
    else:
        x = x.flatten(1)
    centred = x - x.mean(dim=1, keepdim=True)
    unit = centred / (centred.norm(dim=1, keepdim=True) + 1e-8)
    return (unit @ unit.t()).clamp(-1.0, 1.0)


def sim_loss(features: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """MSE between the similarity matrices of ``features`` and of the one-hot labels."""
    target = similarity_matrix(F.one_hot(y, num_classes).to(features.dtype))
    return F.mse_loss(similarity_matrix(features), target)


def _square_side(block: nn.Module, dim: int) -> tuple[int, int]:
    """(channels, side) of a conv block's square output map of ``dim`` numbers."""
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError("predsim: a cnn block without a Conv2d layer")
    channels = convs[-1].out_channels
    side = math.isqrt(dim // channels)
    if channels * side * side != dim:
        raise ConfigError(f"predsim needs square feature maps; a block outputs {dim} numbers")
    return channels, side


@register_rule
class PredSim(Rule):
    info = RuleInfo(
        name="predsim",
        title="Local error signals (per-block pred / sim / predsim losses)",
        citation="Nøkland & Eidnes 2019, ICML, arXiv 1901.06656",
        reverse_ad="within_block",  # each block's own loss, back-propagated inside the block
        backward_locking=False,
        weight_transport=False,
        forward_passes_per_step=1,
        families=("mlp", "cnn"),
        native={"*": "mlp_3x1024"},  # the paper's MNIST MLP (without BN, dropout, LeakyReLU)
        pipeline="local",
        data_parallel=True,
    )
    Hparams = PredSimHparams
    hp: PredSimHparams

    def build(self) -> None:
        assert self.model is not None
        conv = self.model.family == "cnn"
        uses_pred, uses_sim = self.hp.loss != "sim", self.hp.loss != "pred"
        self.pools: list[PoolPlan | None] = []
        self.heads = nn.ModuleList()  # per block: {"decoder": D_k, "sim": S_k}
        for block, dim in zip(self.model.blocks, self.model.block_dims, strict=True):
            heads = nn.ModuleDict()
            if conv:
                channels, side = _square_side(block, dim)
                plan = pool_plan(channels, side, self.hp.dim_in_decoder)
                self.pools.append(plan if plan.kernel != (1, 1) else None)
                features = plan.features
                sim_head: nn.Module = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            else:
                self.pools.append(None)
                features = dim
                sim_head = nn.Linear(dim, dim, bias=False)
            if uses_pred:
                heads["decoder"] = nn.Linear(features, self.num_classes)
                nn.init.zeros_(heads["decoder"].weight)
            if uses_sim:
                heads["sim"] = sim_head
            self.heads.append(heads)
        self.out = nn.Linear(self.model.out_dim, self.num_classes)  # W_out (C, d_L), b_out
        nn.init.zeros_(self.out.weight)
        self.modules["heads"] = self.heads
        self.modules["out"] = self.out
        self.opts = {
            f"block{k}": self.hp.optimizer_for([*block.parameters(), *heads.parameters()])
            for k, (block, heads) in enumerate(zip(self.model.blocks, self.heads, strict=True))
        }
        self.opts["out"] = self.hp.optimizer_for(self.out.parameters())
        self.out_weight = 1.0 - self.hp.beta if self.hp.loss == "predsim" else 1.0

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return dict(self.opts)

    def pred_loss(self, k: int, a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """L_pred,k: cross-entropy of block k's local classifier D_k on its (pooled) output."""
        plan = self.pools[k]
        if plan is not None:
            a = F.avg_pool2d(a, plan.kernel, padding=plan.padding)
        return F.cross_entropy(self.heads[k]["decoder"](a.flatten(1)), y)

    def local_loss(self, k: int, a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """L_k of block k's output ``a``: pred, sim, or (1 - beta) pred + beta sim."""
        if self.hp.loss == "pred":
            return self.pred_loss(k, a, y)
        sim = sim_loss(self.heads[k]["sim"](a), y, self.num_classes)
        if self.hp.loss == "sim":
            return sim
        return (1.0 - self.hp.beta) * self.pred_loss(k, a, y) + self.hp.beta * sim

    def output_loss(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The output layer's loss on the detached last block output (scaled in predsim)."""
        return self.out_weight * F.cross_entropy(self.out(h.detach().flatten(1)), y)

    def train_step(self, batch: Batch) -> torch.Tensor:
        assert self.model is not None
        for opt in self.opts.values():
            opt.zero_grad(set_to_none=True)  # before the forward: no stale gradient in the peak
        y = batch.y
        h, losses = layer_by_layer(
            batch.x, list(self.model.blocks), lambda k, a: self.local_loss(k, a, y)
        )
        out_loss = self.output_loss(h, y)
        out_loss.backward()  # reaches W_out and b_out only
        for opt in self.opts.values():
            opt.step()
        return torch.stack(losses).sum() + out_loss.detach()

    # ---- pipeline stages: a block with its local heads is a unit, W_out goes with the last --
    def pipeline_units(self) -> list[list[nn.Module | torch.Tensor]]:
        assert self.model is not None
        units: list[list[nn.Module | torch.Tensor]] = [
            [block, heads] for block, heads in zip(self.model.blocks, self.heads, strict=True)
        ]
        units[-1].append(self.out)
        return units

    def pipeline_input(self, batch: Batch) -> torch.Tensor:
        return batch.x

    def pipeline_step(
        self, start: int, stop: int, h: torch.Tensor, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks start..stop-1 as in train_step (and W_out with the last block)."""
        assert self.model is not None
        last = stop == len(self.model.blocks)
        opts = [self.opts[f"block{k}"] for k in range(start, stop)]
        opts += [self.opts["out"]] if last else []
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        y = batch.y
        blocks = list(self.model.blocks[start:stop])
        out, losses = layer_by_layer(h, blocks, lambda k, a: self.local_loss(start + k, a, y))
        total = torch.stack(losses).sum()
        if last:
            out_loss = self.output_loss(out, y)
            out_loss.backward()
            total = total + out_loss.detach()
        for opt in opts:
            opt.step()
        return out, total

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        return self.out(self.model(x))
