"""Forward-Forward (FF) — Hinton 2022, arXiv 2212.13345.

Input. The flattened, normalised image x (B, D) with its first C features overwritten by a
label code: ``label_scale`` (default 1, on the scale of the normalised pixels, which span about
-0.8..2.0 on Fashion-MNIST) at the label's position and 0 elsewhere. A positive sample carries
its true label; a negative sample the same image with a wrong label drawn uniformly from the
other C-1 classes (``y_neg = (y + u) mod C``, u ~ U{1..C-1} from the rule's generator; never a
permutation of the batch's labels). The neutral code (classifier option) is label_scale / C in
all C positions.

Layers. Before each layer its (detached) input is divided by its RMS length,
n(h) = h / (sqrt(mean_j h_j^2) + 1e-8), so only the direction of the activity below is passed
on. a_l = relu(W_l n(a_{l-1}) + b_l), (2B, d_l) for the positive and negative halves together.

Loss per layer, with goodness g_l = sum_j a_{l,j}^2 (post-ReLU, before normalisation) and
threshold theta_l = ``threshold`` x d_l (default 1 x d_l: mean square activity 1):

    L_l = BCE_with_logits(g_l - theta_l, 1 for positive / 0 for negative)   (mean over 2B)
        + peer_norm x mean_j (mean_k m_{l,k} - m_{l,j})^2     (optional peer normalisation)

where m_l is a running mean (momentum ``peer_momentum``) of each unit's activity on positive
data. Every layer's input is detached, so the gradient of L_l reaches only W_l, b_l: autograd
runs within one layer, never across layers. L_l is back-propagated as soon as layer l has run
and its graph freed before layer l+1 runs (memory-faithful); then one Adam step over all layers,
which is exactly each layer's own update (the "simultaneous" schedule, the paper's).
``schedule = "layerwise"`` trains layer 1 to convergence (early stopping on its own validation
accuracy), freezes it, then layer 2, ...

Inference (default, the paper's): for every candidate label c, embed c, run the net once and
accumulate sum_{l=2..L} (g_l - theta_l); predict argmax_c (C forward passes per sample). The
first layer is skipped as in the paper; a one-layer net uses its only layer. The returned scores
are these accumulated goodness logits (a sum over layers of the log-odds of "positive").
Option ``predict_mode = "classifier"``: a softmax linear classifier on the concatenated
normalised activities n(a_l), l = 2..L, of a neutral-label pass, trained with cross-entropy on
detached features (a third forward pass per step, alongside the FF layers in the simultaneous
schedule, in a final phase of its own in the layerwise schedule). It never sees a label-embedded
positive, so it cannot read the label off the input.

Pipelined (``--stages K``; simultaneous schedule, goodness inference): a layer with its peer
mean is a unit; stage 0 draws the negative labels and sends the (2B, d) positive-then-negative
activity on; the parameters equal the single-process run's (tests/test_parallel.py).

Deviations: none in the update. Optimizer Adam (lr 1e-3) rather than Hinton's unstated one; the
popular port (loeweX/Forward-Forward) uses SGD with momentum, available as ``optimizer="sgd"``.
``lr_cooldown = True`` (a setting every rule shares, applied by the framework) decays the step
size linearly over the second half of each phase's allotted steps, as Hinton's own code and the
loeweX port do (per step here, per epoch there); it is off by default (a constant step), and
early stopping can end a phase before the cool-down is over.
The reported training loss is the mean of the layers' BCE losses (peer terms excluded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bpfree.errors import ConfigError
from bpfree.rules.base import Batch, Phase, Rule, RuleInfo, register_rule
from bpfree.rules.toolkit import (
    OptimizerSettings,
    at_least,
    in_range,
    layer_by_layer,
    nonnegative,
    positive,
)

EPS = 1e-8


@dataclass(frozen=True)
class FFHparams(OptimizerSettings):
    # Adam, lr 1e-3 (Adam's default; the paper states no optimizer), no weight decay;
    # momentum 0.9 only for sgd (the loeweX port's setting)
    batch_size: int = at_least(100, 1)  # Hinton 2022: mini-batches of 100
    threshold: float = positive(1.0)  # theta_l = threshold * d_l (Hinton: mean square 1)
    label_scale: float = positive(1.0)  # value of the one-hot's 1 in the first C inputs
    peer_norm: float = nonnegative(0.0)  # peer-normalisation weight; 0.03 when used (Hinton)
    peer_momentum: float = in_range(0.9, 0.0, 1.0)  # running-mean momentum (Hinton 2022)
    schedule: Literal["simultaneous", "layerwise"] = "simultaneous"
    predict_mode: Literal["goodness", "classifier"] = "goodness"

    @classmethod
    def suggest(cls, trial: Any) -> FFHparams:
        # lr brackets the tuned AdamW values of the benchmark study (3.7e-4 .. 5.3e-4) by ~10x;
        # threshold per unit 0.5..2 spans "mean square activity 1" and the ports' threshold 2;
        # peer normalisation off or at Hinton's 0.03; batch around Hinton's 100.
        return cls(
            lr=trial.suggest_float("lr", 5e-5, 5e-3, log=True),
            weight_decay=trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
            threshold=trial.suggest_float("threshold", 0.5, 2.0, log=True),
            label_scale=trial.suggest_float("label_scale", 0.5, 4.0, log=True),
            peer_norm=trial.suggest_categorical("peer_norm", [0.0, 0.03]),
            batch_size=trial.suggest_categorical("batch_size", [50, 100, 200]),
        )


def rms_normalize(h: torch.Tensor) -> torch.Tensor:
    """h / (sqrt(mean_j h_j^2) + eps), row-wise: keep the direction, drop the length. (B, d)"""
    return h / (h.pow(2).mean(dim=1, keepdim=True).sqrt() + EPS)


def embed_label(
    x: torch.Tensor, labels: torch.Tensor | None, num_classes: int, scale: float
) -> torch.Tensor:
    """A copy of flat inputs x (B, D) whose first C features hold the label code.

    ``labels=None`` gives the neutral code (scale / C in every position).
    """
    out = x.clone()
    if labels is None:
        out[:, :num_classes] = scale / num_classes
    else:
        out[:, :num_classes] = 0.0
        out[torch.arange(x.shape[0], device=x.device), labels] = scale
    return out


class PeerMeans(nn.Module):
    """Running mean activity of every unit on positive data, one buffer per layer."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        for k, d in enumerate(dims):
            self.register_buffer(f"m{k}", torch.zeros(d))

    def __getitem__(self, k: int) -> torch.Tensor:
        return getattr(self, f"m{k}")

    def set(self, k: int, value: torch.Tensor) -> None:
        getattr(self, f"m{k}").copy_(value)


@register_rule
class ForwardForward(Rule):
    info = RuleInfo(
        name="ff",
        title="Forward-Forward (layer-local goodness of positive vs negative data)",
        citation="Hinton 2022, arXiv 2212.13345",
        reverse_ad="within_block",
        backward_locking=False,
        weight_transport=False,
        forward_passes_per_step=2,  # positive + negative (3 with predict_mode="classifier")
        families=("mlp",),
        native={"*": "mlp_4x2000"},  # Hinton 2022 (MNIST 1.36% error after 60 epochs)
        pipeline="local",
        pipeline_note="the simultaneous schedule with goodness inference pipelines (the "
        "classifier reads every layer; the layerwise schedule trains one layer)",
        data_parallel=True,
    )
    Hparams = FFHparams
    hp: FFHparams

    def build(self) -> None:
        assert self.model is not None
        dims = self.model.block_dims
        if self.model.blocks[0].linear.in_features < self.num_classes:
            raise ConfigError("ff embeds the label in the first C inputs: need >= C inputs")
        self.thresholds = [self.hp.threshold * d for d in dims]
        self.peer = PeerMeans(dims)
        self.modules["peer"] = self.peer
        self.first = 1 if len(dims) > 1 else 0  # first layer counted at inference
        self.n_active = len(dims)  # layers trained so far (layerwise) or all
        self.train_classifier = self.hp.schedule == "simultaneous"
        if self.hp.predict_mode == "classifier":
            self.classifier = nn.Linear(sum(dims[self.first :]), self.num_classes)
            self.modules["classifier"] = self.classifier
        if self.hp.schedule == "simultaneous":
            self.opt = self._optimizer(self.modules.parameters())
        else:
            self.n_active = 1

    def _optimizer(self, params: Any) -> torch.optim.Optimizer:
        return self.hp.optimizer_for(params)

    # ---- phases (layerwise schedule) -----------------------------------------------------
    def phases(self) -> list[Phase]:
        assert self.model is not None
        if self.hp.schedule == "simultaneous":
            return [Phase("train")]
        n = len(self.model.blocks)
        out = [Phase(f"layer{i + 1}", i) for i in range(n)]
        if self.hp.predict_mode == "classifier":
            out.append(Phase("classifier", n))
        return out

    def begin_phase(self, phase: Phase, train_x: torch.Tensor, train_y: torch.Tensor) -> None:
        if self.hp.schedule != "layerwise":
            return
        assert self.model is not None
        if phase.name == "classifier":
            self.n_active, self.train_classifier = len(self.model.blocks), True
            self.opt = self._optimizer(self.classifier.parameters())
        else:
            self.n_active, self.train_classifier = phase.index + 1, False
            self.opt = self._optimizer(self.model.blocks[phase.index].parameters())

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt} if hasattr(self, "opt") else {}

    def extra_state(self) -> dict[str, Any]:
        return {"n_active": self.n_active, "train_classifier": self.train_classifier}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.n_active = int(state.get("n_active", self.n_active))
        self.train_classifier = bool(state.get("train_classifier", self.train_classifier))

    # ---- training ------------------------------------------------------------------------
    def negative_labels(self, y: torch.Tensor) -> torch.Tensor:
        """A wrong label per sample, uniform over the other C-1 classes (rule generator)."""
        shift = torch.randint(
            1, self.num_classes, y.shape, generator=self.generator, device=y.device
        )
        return (y + shift) % self.num_classes

    def _layer(self, k: int, h: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        return self.model.blocks[k](rms_normalize(h.detach()))  # (n, d_k)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised activities of layers first..L on a neutral-label pass, concatenated."""
        h, feats = embed_label(x, None, self.num_classes, self.hp.label_scale), []
        for k in range(len(self.thresholds)):
            h = self._layer(k, h)
            if k >= self.first:
                feats.append(rms_normalize(h))
        return torch.cat(feats, dim=1)  # (B, sum_l d_l)

    def train_step(self, batch: Batch) -> torch.Tensor:
        x = batch.x.flatten(1)  # (B, D)
        hp = self.hp
        self.opt.zero_grad(set_to_none=True)  # before the forward: no stale gradient in the peak
        if self.train_classifier and hp.schedule == "layerwise":  # frozen FF layers
            with torch.no_grad():
                feats = self._features(x)
            ce = F.cross_entropy(self.classifier(feats), batch.y)
            ce.backward()
            self.opt.step()
            return ce.detach()
        bces = self._ff_layers(x, batch.y)
        if self.train_classifier and hp.predict_mode == "classifier":
            with torch.no_grad():
                feats = self._features(x)
            F.cross_entropy(self.classifier(feats), batch.y).backward()
        self.opt.step()
        report = torch.zeros((), device=x.device)
        for bce in bces:
            report = report + bce
        return report / len(bces)

    def _ff_layers(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Positive and negative data through the layers; each trained layer's loss is
        back-propagated within the layer at once. Returns the layers' detached BCE losses."""
        h = self._pos_neg(x, y)  # (2B, D)
        train_from = self.n_active - 1 if self.hp.schedule == "layerwise" else 0
        with torch.no_grad():  # frozen layers below the one in training
            for k in range(train_from):
                h = self._layer(k, h)
        return self._train_layers(h, train_from, self.n_active, x.shape[0])[1]

    def _train_layers(
        self, h: torch.Tensor, start: int, stop: int, n: int
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Layers start..stop-1 on (2n, d) positive-then-negative input, each back-propagated
        within itself at once: (the last layer's detached output, their detached BCE losses)."""
        hp, bces = self.hp, []
        target = torch.cat([h.new_ones(n), h.new_zeros(n)])  # (2n,)

        def local_loss(i: int, a: torch.Tensor) -> torch.Tensor:
            k = start + i
            goodness = a.pow(2).sum(dim=1)  # (2n,)
            loss = F.binary_cross_entropy_with_logits(goodness - self.thresholds[k], target)
            bces.append(loss.detach())
            if hp.peer_norm > 0:
                m = hp.peer_momentum * self.peer[k] + (1 - hp.peer_momentum) * a[:n].mean(0)
                loss = loss + hp.peer_norm * (m.mean() - m).pow(2).mean()
                self.peer.set(k, m.detach())
            return loss

        layers = [lambda h, k=k: self._layer(k, h) for k in range(start, stop)]
        out, _ = layer_by_layer(h, layers, local_loss)
        return out, bces

    # ---- pipeline stages: a layer with its peer mean is a unit ------------------------------
    def pipeline_units(self) -> list[list[nn.Module | torch.Tensor]]:
        assert self.model is not None
        if self.hp.schedule != "simultaneous" or self.hp.predict_mode != "goodness":
            raise ConfigError(
                f"ff with schedule={self.hp.schedule!r}, predict_mode={self.hp.predict_mode!r}: "
                + self.info.pipeline_note
            )
        return [[block, self.peer[k]] for k, block in enumerate(self.model.blocks)]

    def pipeline_input(self, batch: Batch) -> torch.Tensor:
        return self._pos_neg(batch.x.flatten(1), batch.y)

    def _pos_neg(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Positive then negative copies of flat inputs (B, D), labels embedded: (2B, D)."""
        scale = self.hp.label_scale
        pos = embed_label(x, y, self.num_classes, scale)
        neg = embed_label(x, self.negative_labels(y), self.num_classes, scale)
        return torch.cat([pos, neg])

    def pipeline_step(
        self, start: int, stop: int, h: torch.Tensor, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.opt.zero_grad(set_to_none=True)
        out, bces = self._train_layers(h, start, stop, batch.y.shape[0])
        self.opt.step()  # steps only the parameters with gradients: this stage's
        total = torch.zeros((), device=h.device)
        for bce in bces:
            total = total + bce
        return out, total / len(self.thresholds)

    # ---- inference -----------------------------------------------------------------------
    def forward_passes(self) -> int:
        return 3 if self.hp.predict_mode == "classifier" else 2  # + the classifier's pass

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, D)
        b, c = x.shape[0], self.num_classes
        if self.hp.predict_mode == "classifier" and self.train_classifier:
            return self.classifier(self._features(x))
        # Every candidate label for every sample: (B*C, D), row b*C + c carries label c.
        labels = torch.arange(c, device=x.device).repeat(b)
        h = embed_label(x.repeat_interleave(c, dim=0), labels, c, self.hp.label_scale)
        first = 1 if self.n_active > 1 else 0
        score = x.new_zeros(b * c)
        for k in range(self.n_active):
            h = self._layer(k, h)
            if k >= first:
                score += h.pow(2).sum(dim=1) - self.thresholds[k]
        return score.view(b, c)
