"""FOTON — Caillon, Colagrande, Fagnou, Delattre & Allauzen, ECAI 2025, "Forward Only Learning
for Orthogonal Neural Networks of any Depth" (arXiv 2512.20668; reference code p0lcAi/FOTON,
``model_utils/foton.py``).

PEPITA's two forward passes with the input modulated through the network's own weights. If every
layer were linear and orthogonal, x - e F_T with F_T = W_out W_L ... W_1 would move each hidden
layer by exactly its backprop error, so the forward-only update would equal backprop's; FOTON
keeps the weights orthogonal (Björck iterations after every step) and relaxes the linearity.
The body is L hidden layers h_l = m_l * relu(W_l h_{l-1}) (no biases, h_0 = flattened x,
inverted-dropout masks m_l when the body has dropout); the rule adds W_out (C x d_L). Per batch
of B samples (row-vector convention):

    pass 1:   h_l (B, d_l), out = h_L W_out^T (B, C)     e = softmax(T out) - onehot(y)
    F_T      = W_out W_L ... W_1                          (C, d_in), from the current weights
    pass 2:   h'_l from x' = x - e F_T, same masks m_l
    dW_l     = (h_l - h'_l)^T h_{l-1} / B                 (d_l, d_{l-1}), *unmodulated* h_{l-1}
    dW_out   = e^T h_L / B                                (C, d_L)
    W       <- W - lr (dW + lambda W)                     (SGD; lambda = weight_decay)
    W       <- Bjorck(W) for every weight, every ``ortho_every`` steps

Björck (order 1): W <- W / ||W||_2, then ``bjorck_iters`` times W <- 1.5 W - 0.5 W W^T W (for a
wide W: (W W^T) W), which drives every singular value to 1 (rows or columns orthonormal). It runs
in place on the parameters' storage, so the optimizer keeps its state (the reference code wraps
new Parameters, which only its hand-written optimizer survives).

No autograd call (``reverse_ad = "none"``). F_T is a product of the forward weights, so the rule
*does* use them to carry the error to the input (``weight_transport = True``: the product, not
the layer-by-layer transposes of backprop); no layer waits for a backward sweep.

Faithful to the reference code's defaults (``config.yaml``): SGD lr 0.5 without momentum, batch
256, temperature T = 1, no weight decay, F recomputed every step (update_F = 1), Björck every
step with 20 iterations (the code's hard-coded count), orthogonal initialisation, no biases,
dropout 0.1 before the ReLU with masks shared by both passes (the same as a mask after it),
hidden layers [256, 256] (native network ``mlp_2x256_drop10_nobias``).

Choices and deviations:
  * The code scales W by a power-iteration estimate of its spectral norm before the iterations;
    we divide by the exact norm (``torch.linalg.matrix_norm(ord=2)``): deterministic, no random
    start vector.
  * The orthogonal initialisation is drawn from the rule's generator; the backprop twin keeps
    PyTorch's default initialisation of the same network (orthogonality is part of the rule).
  * On a body with biases (not the native one): b_l steps on mean_b (h_l - h'_l) and b_out on
    mean_b e, summed over the batch as they should be (the reference code's bias update keeps an
    un-summed (out x B) matrix, a bug the spec notes); biases are not orthogonalised.
  * Björck's cost is real work of the rule and is counted in its training FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bpfree.rules.base import Batch, Rule, RuleInfo, register_rule
from bpfree.rules.toolkit import (
    OptimizerName,
    OptimizerSettings,
    at_least,
    dropout_masks,
    nonnegative,
    positive,
    set_linear_grad,
    suggest_optimizer,
)


@dataclass(frozen=True)
class FOTONHparams(OptimizerSettings):
    batch_size: int = at_least(256, 1)  # config.yaml
    lr: float = positive(0.5)  # config.yaml, SGD
    optimizer: OptimizerName = "sgd"
    momentum: float = nonnegative(0.0)  # config.yaml: no momentum
    temperature: float = positive(1.0)  # e = softmax(T out) - onehot (ce_T)
    bjorck_iters: int = at_least(20, 0)  # the code's bjorck_orthogonalize_all
    ortho_every: int = at_least(1, 1)  # ortho.rate

    @classmethod
    def suggest(cls, trial: Any) -> FOTONHparams:
        # SGD step sizes around the code's 0.5; batch sizes around its 256.
        space = suggest_optimizer(trial, lr=(0.01, 2.0), batch_sizes=(128, 256, 512))
        return cls(**space)


@torch.no_grad()
def bjorck_(w: torch.Tensor, iters: int) -> None:
    """Orthonormalise ``w`` (out, in) in place: scale by its spectral norm, then ``iters``
    order-1 Björck steps w <- 1.5 w - 0.5 w w^T w (rows orthonormal if out <= in, else
    columns)."""
    w.div_(torch.linalg.matrix_norm(w, ord=2).clamp_min(1e-12))
    wide = w.shape[0] <= w.shape[1]
    for _ in range(iters):
        # (out, out) x (out, in) for a wide w, (out, in) x (in, in) for a tall one
        update = (w @ w.t()) @ w if wide else w @ (w.t() @ w)
        w.mul_(1.5).sub_(update, alpha=0.5)


@register_rule
class FOTON(Rule):
    info = RuleInfo(
        name="foton",
        title="FOTON (forward-only training of orthogonal networks, F = W_out ... W_1)",
        citation="Caillon et al. 2025, ECAI, arXiv 2512.20668",
        reverse_ad="none",
        backward_locking=False,
        weight_transport=True,  # the product W_out ... W_1 carries the error (see the card)
        forward_passes_per_step=2,
        families=("mlp",),
        native={"*": "mlp_2x256_drop10_nobias"},
    )
    Hparams = FOTONHparams
    hp: FOTONHparams

    def build(self) -> None:
        assert self.model is not None and self.generator is not None
        self.head = nn.Linear(self.model.out_dim, self.num_classes, bias=self.model.bias)
        self.modules["head"] = self.head
        self.layers = [*(b.linear for b in self.model.blocks), self.head]
        with torch.no_grad():
            for layer in self.layers:
                nn.init.orthogonal_(layer.weight, generator=self.generator)
                if layer.bias is not None:
                    layer.bias.zero_()
        self.opt = self.hp.optimizer_for(self.modules.parameters())
        self.steps = 0

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def extra_state(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))

    def _pass(
        self, x: torch.Tensor, masks: list[torch.Tensor | None]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """[h_1 .. h_L] (after their masks) and the output (B, C)."""
        hs, h = [], x
        for layer, mask in zip(self.layers[:-1], masks, strict=True):
            h = torch.relu(layer(h))
            if mask is not None:
                h = h.mul_(mask)
            hs.append(h)
        return hs, self.head(h)

    def feedback_product(self) -> torch.Tensor:
        """F_T = W_out W_L ... W_1, (C, d_in), from the current weights."""
        f = self.layers[0].weight
        for layer in self.layers[1:]:
            f = layer.weight @ f
        return f

    @torch.no_grad()
    def train_step(self, batch: Batch) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)  # before the forward: no stale gradient in the peak
        x = batch.x.flatten(1)  # (B, d_in)
        assert self.model is not None and self.generator is not None
        masks = dropout_masks(self.model, x.shape[0], self.generator)
        hs, out = self._pass(x, masks)
        loss = F.cross_entropy(out, batch.y)
        e = torch.softmax(self.hp.temperature * out, dim=1)
        e[torch.arange(x.shape[0], device=x.device), batch.y] -= 1.0  # (B, C)
        hs_mod, _ = self._pass(x - e @ self.feedback_product(), masks)
        set_linear_grad(self.head, e, hs[-1])  # e^T h_L / B
        inputs = [x, *hs[:-1]]  # unmodulated presynaptic activity
        for layer, h, h_mod, a_in in zip(self.layers[:-1], hs, hs_mod, inputs, strict=True):
            set_linear_grad(layer, h - h_mod, a_in)  # (h_l - h'_l)^T h_{l-1} / B
        self.opt.step()
        self.steps += 1
        if self.steps % self.hp.ortho_every == 0:
            for layer in self.layers:
                bjorck_(layer.weight.data, self.hp.bjorck_iters)
        return loss

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        return self.head(self.model(x))
