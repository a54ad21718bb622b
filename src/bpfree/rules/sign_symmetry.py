"""Sign symmetry — Liao, Leibo & Poggio 2016, "How Important is Weight Symmetry in
Backpropagation?", AAAI 2016 (arXiv 1510.05067).

Backprop, end to end by autograd, except that every layer sends the error to its *input*
through a feedback weight B_l of the shape of its forward weight W_l whose signs are W_l's
("sign-concordant"), instead of through W_l itself. For a dense layer z_l = a_{l-1} W_l^T + b_l,
W_l (d_l, d_{l-1}), and g_l = dL/dz_l (B, d_l) (row-vector convention, L the mean
cross-entropy of the head's logits):

    dL/da_{l-1} := g_l B_l                        (B, d_l) x (d_l, d_{l-1})   B_l for W_l
    dW_l = g_l^T a_{l-1},  db_l = sum_b g_l       the usual weight gradient
    g_{l-1} = (g_l B_l) * relu'(z_{l-1})          for a dense block below:
                                                  delta_l = (delta_{l+1} B_{l+1}) * relu'(z_l)

For a convolution z = conv2d(a, W) + b, W (C_out, C_in, k, k), the error to the input is the
transposed convolution of g (B, C_out, H', W') with B instead of W,
dL/da := conv_transpose2d(g, B) (B, C_in, H, W) (``torch.nn.grad.conv2d_input``), and dW, db are
the usual ones. Everything between the layers (ReLU, max pooling, cnn_3block's BatchNorm) is
back-propagated by ordinary autograd: these are elementwise or per-channel operations with no
weight to transport, and BatchNorm's own scale and shift train on their true gradients.

The feedback weights, recomputed every step from the current W_l (after the last update):

    usf   B_l = s_l sign(W_l),       s_l = sqrt(2 / (fan_in + fan_out))   uniform magnitude
    brsf  B_l = |M_l| * sign(W_l),   M_l ~ U(-r_l, r_l) redrawn every step  batchwise random
    frsf  B_l = |M_l| * sign(W_l),   M_l ~ U(-r_l, r_l) drawn once          fixed random

with r_l = sqrt(6 / (fan_in + fan_out)) = sqrt(3) s_l, so the root-mean-square magnitude of
|M_l| is s_l in every variant (fan_in = C_in k k, fan_out = C_out k k for a convolution, as
``torch.nn.init`` counts them). M_l is drawn from the rule's generator (brsf: a fresh draw per
step; frsf: once, kept as checkpointed buffers ``magnitude.b<k>`` holding |M_l|). sign(0) = 0:
a zero weight sends no feedback. The first layer has no feedback weight: the error to the
input image is never computed. The head (W_out (C, d_L)) is a layer like the others: its
error to the body goes through B_out. ``predict`` is the ordinary forward pass; the feedback
weights only change training.

Properties: the backward sweep is a global reverse-mode pass (``reverse_ad = "global"``,
``backward_locking = True``). It transports the *signs* of the forward weights to the feedback
path, one bit per synapse, so ``weight_transport = True``: sign symmetry relaxes backprop's
weight symmetry but does not remove the weight-transport question.

Choices and deviations:
  * The scale s_l is biotorch's (jsalbert/biotorch, ``layers/fa_constructor``): the standard
    deviation of Xavier initialisation, after Xiao et al. 2018 ("Biologically-plausible learning
    algorithms can scale to large datasets"), to keep the backward signal from exploding. The
    paper's uSF is the unscaled sign(W). The brsf / frsf magnitudes U(0, r_l) are biotorch's
    (|M| with M Xavier-uniform), without a second scaling.
  * Initialisation: PyTorch's default for every layer, the same init as the backprop twin
    (biotorch's default is Xavier-uniform weights and zero biases; its PyTorch-default mode
    would scale uSF by 1 / sqrt(3 fan_in), the std of that init; we keep the Xavier std s_l).
  * biotorch builds B_l at every forward call (evaluation included); here B_l is built once per
    training step, before the forward, and brsf draws only then: the feedback matters only in
    training and the evaluation passes leave the generator alone.
  * The paper found sign-concordant feedback to need Batch Normalization and/or its
    "Batch Manhattan" update (the sign of the batch gradient); neither is part of this rule.
    lenet5 has no normalisation (as biotorch's LeNet), cnn_3block keeps its BatchNorm, and the
    optimizer is a shared setting.
  * Optimizer: Adam, lr 1e-3, batch 128 (the toolkit's defaults, as FA). biotorch's CIFAR-10
    benchmark configs ran SGD (lr 0.1, momentum 0.9, weight decay 1e-4) and Adam (lr 1e-3,
    weight decay 1e-4), batch 128, both with x0.1 step drops; ``optimizer = "sgd"`` and
    ``lr_drops`` give those.
  * Memory: each layer above the first keeps its B_l (weight-sized) from the forward to the
    backward, as biotorch's ``weight_backward``; otherwise autograd keeps what backprop keeps.
  * Native network lenet5, the network of biotorch's MNIST / Fashion-MNIST sign-symmetry
    benchmarks; MLPs and cnn_3block are trained too. A body with dropout is refused (its masks
    would have to come from the global RNG).

The reported training loss is the mean cross-entropy of the head's logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bpfree.errors import ConfigError
from bpfree.rules.base import Batch, Rule, RuleInfo, register_rule
from bpfree.rules.toolkit import FixedRandom, OptimizerSettings, suggest_optimizer

Variant = Literal["usf", "brsf", "frsf"]
Layer = nn.Linear | nn.Conv2d
# The modules a conv block may hold after its convolution (applied in order after the ReLU).
AFTER_CONV = (nn.MaxPool2d, nn.AvgPool2d, nn.BatchNorm2d)


class _FeedbackLinear(torch.autograd.Function):
    """y = x W^T + b; backward: dx = g B (not g W), dW = g^T x, db = sum_b g."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        feedback: torch.Tensor,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, feedback)
        return F.linear(x, weight, bias)  # (B, d_in) -> (B, d_out)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, feedback = ctx.saved_tensors
        dx = g @ feedback if ctx.needs_input_grad[0] else None  # (B, d_out) x (d_out, d_in)
        dw = g.t() @ x if ctx.needs_input_grad[1] else None  # (d_out, d_in)
        db = g.sum(0) if ctx.needs_input_grad[2] else None  # (d_out,)
        return dx, dw, db, None


class _FeedbackConv2d(torch.autograd.Function):
    """y = conv2d(x, W) + b; backward: dx = conv_transpose2d(g, B), dW and db as usual."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        feedback: torch.Tensor,
        conv: nn.Conv2d,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, feedback)
        ctx.weight_shape, ctx.conv = weight.shape, conv
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, feedback = ctx.saved_tensors
        conv: nn.Conv2d = ctx.conv
        geometry = (conv.stride, conv.padding, conv.dilation, conv.groups)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:  # (B, C_out, H', W') -> (B, C_in, H, W) through B
            dx = torch.nn.grad.conv2d_input(x.shape, feedback, g, *geometry)
        if ctx.needs_input_grad[1]:  # (C_out, C_in, k, k)
            dw = torch.nn.grad.conv2d_weight(x, ctx.weight_shape, g, *geometry)
        if ctx.needs_input_grad[2]:
            db = g.sum((0, 2, 3))  # (C_out,)
        return dx, dw, db, None, None


def fans(weight: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a linear (out, in) or conv (out, in, k, k) weight, as torch.nn.init
    counts them."""
    receptive = math.prod(weight.shape[2:])
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def xavier_std(weight: torch.Tensor) -> float:
    """sqrt(2 / (fan_in + fan_out)): the uSF scale s_l."""
    fan_in, fan_out = fans(weight)
    return math.sqrt(2.0 / (fan_in + fan_out))


@dataclass(frozen=True)
class SignSymmetryHparams(OptimizerSettings):
    # Adam, lr 1e-3, batch 128, no weight decay: the toolkit's defaults, as FA (see the card)
    variant: Variant = "usf"  # the feedback's magnitudes: uniform, batchwise or fixed random

    @classmethod
    def suggest(cls, trial: Any) -> SignSymmetryHparams:
        # The backprop baseline's lr / weight-decay / batch ranges: comparable spaces.
        return cls(**suggest_optimizer(trial))


@register_rule
class SignSymmetry(Rule):
    info = RuleInfo(
        name="sign_symmetry",
        title="Sign symmetry (backprop through sign-concordant feedback weights)",
        citation="Liao, Leibo & Poggio 2016, AAAI (arXiv 1510.05067)",
        reverse_ad="global",
        backward_locking=True,
        weight_transport=True,  # the signs of the forward weights
        forward_passes_per_step=1,
        families=("mlp", "cnn"),
        native={"*": "lenet5"},
    )
    Hparams = SignSymmetryHparams
    hp: SignSymmetryHparams

    def build(self) -> None:
        assert self.model is not None and self.generator is not None
        self.head = nn.Linear(self.model.out_dim, self.num_classes, bias=self.model.bias)
        self.modules["head"] = self.head
        # W_1 .. W_L, W_out: the layers whose error to their input goes through B_l
        self.layers: list[Layer] = [*(self._layer(b) for b in self.model.blocks), self.head]
        if self.hp.variant == "frsf":  # |M_l| for l = 2 .. L+1 (the first layer has none)
            weights = [layer.weight for layer in self.layers[1:]]
            bounds = [math.sqrt(3.0) * xavier_std(w) for w in weights]
            self.magnitude = FixedRandom([tuple(w.shape) for w in weights], self.generator, bounds)
            for k in range(len(self.magnitude)):
                self.magnitude[k].abs_()
            self.modules["magnitude"] = self.magnitude
        self.opt = self.hp.optimizer_for(self.modules.parameters())

    def _layer(self, block: nn.Module) -> Layer:
        """The weight layer of a block, after checking the block is one this rule can run."""
        children = dict(block.named_children())
        name = type(block).__name__
        if getattr(block, "p_drop", 0.0) > 0:
            raise ConfigError(
                "sign_symmetry does not train bodies with dropout; choose a network without _drop"
            )
        if isinstance(children.get("linear"), nn.Linear) and len(children) == 1:
            return children["linear"]
        conv = children.pop("conv", None)
        if not isinstance(conv, nn.Conv2d) or not all(
            isinstance(m, AFTER_CONV) for m in children.values()
        ):
            raise ConfigError(
                f"sign_symmetry cannot run a {name} block: it runs dense blocks (linear -> ReLU) "
                "and conv blocks (conv -> ReLU -> pooling/BatchNorm)"
            )
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ConfigError(f"sign_symmetry needs numeric zero padding in {name}.conv")
        return conv

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def feedback(self, k: int, weight: torch.Tensor) -> torch.Tensor:
        """B for layer k >= 1 (``self.layers[k]``), of the shape of its weight, from the
        current weight; called under ``torch.no_grad()`` once per step."""
        sign = weight.sign()
        if self.hp.variant == "usf":
            return sign.mul_(xavier_std(weight))
        if self.hp.variant == "frsf":
            return sign.mul_(self.magnitude[k - 1])
        assert self.generator is not None  # brsf: |M| ~ U(0, r), a fresh draw every step
        g = self.generator
        m = torch.rand(weight.shape, generator=g, device=g.device, dtype=weight.dtype)
        return sign.mul_(m.mul_(math.sqrt(3.0) * xavier_std(weight)))

    def _forward(self, x: torch.Tensor, feedback: list[torch.Tensor | None]) -> torch.Tensor:
        """The forward pass, with every weight layer's backward going through its feedback."""
        assert self.model is not None
        h = x
        body = zip(self.model.blocks, self.layers[:-1], feedback[:-1], strict=True)
        for block, layer, fb in body:
            if isinstance(layer, nn.Linear):
                h = torch.relu(self._linear(layer, h.flatten(1), fb))  # (B, d_l)
                continue
            if fb is None:
                h = layer(h)  # the first layer: no error to the input is computed
            else:
                h = _FeedbackConv2d.apply(h, layer.weight, layer.bias, fb, layer)
            h = torch.relu(h)
            for name, module in block.named_children():
                if name != "conv":
                    h = module(h)  # pooling, BatchNorm: ordinary autograd
        return self._linear(self.head, h.flatten(1), feedback[-1])  # (B, C)

    @staticmethod
    def _linear(layer: nn.Linear, h: torch.Tensor, fb: torch.Tensor | None) -> torch.Tensor:
        if fb is None:
            return layer(h)
        return _FeedbackLinear.apply(h, layer.weight, layer.bias, fb)

    def train_step(self, batch: Batch) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)  # before the forward: no stale gradient in the peak
        with torch.no_grad():
            feedback: list[torch.Tensor | None] = [None]
            feedback += [
                self.feedback(k, self.layers[k].weight) for k in range(1, len(self.layers))
            ]
        logits = self._forward(batch.x, feedback)  # (B, C)
        loss = F.cross_entropy(logits, batch.y)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        return self.head(self.model(x))
