"""NoProp — Li, Teh & Pascanu 2025, "NoProp: Training Neural Networks without (Full)
Back-propagation or (Full) Forward-propagation", arXiv 2503.24322 (no official code).

Each block learns, alone, to denoise a noisy class embedding given the image; inference chains
the blocks from noise to a label. Networks: ``bpfree.models.noprop`` (``noprop_dt``, ``_ct``,
``_fm``; their docstring gives the blocks). Notation: W_Embed (C x d, rows u_y), time runs from
noise (t = 0) to label (t = T or 1), q(z_t|y) = N(sqrt(abar_t) u_y, (1 - abar_t) I), SNR =
abar / (1 - abar), u_t = softmax(block_t(z, x)) W_Embed.

``variant = "dt"`` (default; T = 10 blocks, fixed cosine schedule abar_0 = 0 .. abar_T = 1 -
1.6e-4). Paper's loss (Eq. 8, as transcribed in algorithms-more.md 4(a)):

    L = E[-log p_out(y|z_T)] + KL(q(z_0|y) || N(0, I))
        + (T/2) eta E_{t~U{1..T}} [(SNR(t) - SNR(t-1)) ||u_t(z_{t-1}, x) - u_y||^2]

with z_{t-1} ~ q(z_{t-1}|y) drawn directly (never from block t-1) and p_out = softmax(W_out z
+ b_out) (the rule's ``head``). **Sampling t: every block, every step**, t = 1..T in turn, each
with the paper's single-t loss L_t = CE + KL + (T/2) eta (SNR(t) - SNR(t-1)) ||u_t - u_y||^2
(fresh noise for z_{t-1} and z_T) and the paper's update of theta_t, W_out and W_Embed right
after its backward. That is Algorithm 1 with the loops swapped (the paper runs t outside the
data, we run it inside each batch): the same counts, one step per batch for each block, T for
the shared parameters. Block t's graph is freed before block t+1 runs (activation memory is
flat in T) and no loss reaches another block; a learned W_Embed, as in the paper, is shared.
The reported loss is mean_t L_t (= L). Under ``lr_cooldown``/``lr_drops`` the shared optimizer
is scheduled over its T steps a batch. KL is in closed form, (1/2)(abar_0 ||u_y||^2 - d (abar_0
+ log(1 - abar_0))): about 0 at abar_0 = 0.

**Inference (DT)**, the paper's Eq. 3: z_0 ~ N(0, I), z_t = a_t u_t(z_{t-1}, x) + b_t z_{t-1}
+ sqrt(c_t) eps_t, classify z_T, with alpha_{t-1} = abar_{t-1} / abar_t and

    a_t = sqrt(abar_t)(1 - alpha_{t-1}) / (1 - abar_{t-1}),  b_t = sqrt(alpha_{t-1})(1 -
    abar_t) / (1 - abar_{t-1}),  c_t = (1 - abar_t)(1 - alpha_{t-1}) / (1 - abar_{t-1}).

Checked three ways: the spec's [recalled] formulas; a public transcription of the paper (a
"NoProp Algorithm: Mathematical Formulas" note quoting v1, "between Eq. 6 and 7, derived in
Appendix A.3"), identical; and derived here: they are exactly the mean and variance of the
Gaussian posterior q(z_t | z_{t-1}, y) under the paper's q(z_{t-1}|z_t) = N(sqrt(alpha_{t-1})
z_t, (1 - alpha_{t-1}) I), so a_t + b_t sqrt(abar_{t-1}) = sqrt(abar_t) and c_t + b_t^2 (1 -
abar_{t-1}) = 1 - abar_t (tests check both). Read this way alpha_0 = abar_0 / abar_1 is fine
(reproductions that index alpha the DDPM way hit 1 - abar_0 = 0). DanielHalachev/NoProp does
not use Eq. 3 (it sets z_t = u_t). **Deviation: we take the mean path**, z_0 = 0 and eps_t = 0,
so ``predict`` is deterministic and batch-independent (BatchNorm in eval mode); that is
``model(x)``, T block passes, then ``head``.

``variant = "ct"`` (``noprop_ct``; paper: Adam, eta = 1, 1000 inference steps). One block
u(z, x, t) with a time embedding and a learnable schedule abar(t) = sigmoid(-gamma(t)),
gamma monotone from 7 to -7 (``GammaSchedule``, after Kingma et al. 2021; endpoints fixed:
ours). Per step, t ~ U[0, 1] per sample:

    L = E[-log p_out(y|z_1)] + KL(q(z_0|y) || N(0, I)) + (eta/2) E_t[SNR'(t) ||u(z_t, x, t)
        - u_y||^2],    SNR'(t) = -gamma'(t) exp(-gamma(t)) (closed form, no autograd on t).

The t of a batch are stratified, t_i = (s + i/B) mod 1 (Kingma et al. 2021's low-discrepancy
sampler; ours): still U[0, 1] each, but SNR'(t) spans 1e-3 .. 1e4, so plain draws make the
loss swing by the few samples near t = 1. Inference: Euler steps of the probability-flow ODE
of q(z_t|y), dz/dt = -gamma'(t)/2 (sqrt(abar) u - abar z), from z(0) = 0 (ours: derived; the
reproductions integrate (u - z) / (1 - abar), not this path's ODE), then ``head``.

``variant = "fm"`` (``noprop_fm``): z_t = t u_y + (1 - t) z_0, z_0 ~ N(0, I), t ~ U[0, 1]
(stratified as in CT); L = E ||v(z_t, x, t) - (u_y - z_0)||^2; inference: Euler from z(0) = 0,
then the nearest embedding (logits -||z_1 - u_c||^2). With a trainable W_Embed we add
cross-entropy on those logits at the one-step estimate z_t + (1 - t) v [recalled from the
paper, unverified], without which the embeddings collapse. eta is unused here.

CT and FM take ``inference_steps`` Euler steps (0, the default: the model's, 10, the same chain
the twin trains through; the paper's 1000 is ~100x DT's inference cost).

Embeddings (``embedding``): "onehot" (d = C, W_Embed = I, frozen), "learned" (any d, orthogonal
start, e.g. ``noprop_dt_e20``), "prototype" (d = pixels, e.g. ``noprop_dt_e784`` on 28x28:
W_Embed starts as each class's mean training image (ours; the paper's exact prototype rule is
unverified), then learns). Trainable embeddings and W_out step with the shared optimizer.

What "backprop-free" means here: reverse-mode AD inside one block only; no backward locking (no
block waits for another); but within a block ordinary backprop sends errors through its own
layers' weights, and the CE error reaches a learned W_Embed through W_out: weight transport =
True. One forward pass of each block per step (the whole DT network is T blocks, each seeing
the batch once); inference is sequential: T block passes (DT) or the Euler steps (CT, FM).
The backprop twin (``bp`` on the same network) trains ``model(x)``, the noise-free chain above,
end to end under one linear head shaped as W_out: the same parameters (NoProp freezes a one-hot
W_Embed, the twin trains it) and the same inference passes.

Other choices: AdamW, lr 1e-3, weight decay 1e-3, batch 128 for every variant (the paper's DT
settings; set ``optimizer=adam`` for its CT); eta None means 0.1 (dt) or 1 (ct). Dropout masks
come from the rule's generator. Reproducers found logits-to-CE heads train better than the
paper's softmax-weighted embedding (algorithms-more.md 4(f)); we keep the paper's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bpfree.errors import ConfigError
from bpfree.models.noprop import FAMILY, GAMMA_MAX, GAMMA_MIN, NoPropNet
from bpfree.rules.base import Batch, Phase, Rule, RuleInfo, register_rule
from bpfree.rules.toolkit import (
    OptimizerName,
    OptimizerSettings,
    at_least,
    nonnegative,
    schedule_phase,
    suggest_optimizer,
)

Variant = Literal["dt", "ct", "fm"]
Embedding = Literal["onehot", "learned", "prototype"]
PAPER_ETA = {"dt": 0.1, "ct": 1.0, "fm": 1.0}  # fm: unused


@dataclass(frozen=True)
class NoPropHparams(OptimizerSettings):
    # Li et al. 2025 (DT, MNIST and CIFAR): AdamW, lr 1e-3, weight decay 1e-3, batch 128
    optimizer: OptimizerName = "adamw"
    weight_decay: float = nonnegative(1e-3)
    variant: Variant = "dt"  # must match the model: noprop_dt, noprop_ct, noprop_fm
    embedding: Embedding = "onehot"
    eta: float | None = None  # the denoising term's weight; None: 0.1 (dt), 1 (ct)
    inference_steps: int = at_least(0, 0)  # ct/fm Euler steps in predict; 0: the model's

    def validate(self) -> None:
        super().validate()
        if self.eta is not None and not (math.isfinite(self.eta) and self.eta > 0):
            raise ConfigError(f"eta must be a positive number, got {self.eta}")
        if self.variant == "dt" and self.inference_steps:
            raise ConfigError("inference_steps applies to variant ct and fm; dt runs its T blocks")

    @property
    def eta_value(self) -> float:
        return PAPER_ETA[self.variant] if self.eta is None else self.eta

    @classmethod
    def suggest(cls, trial: Any) -> NoPropHparams:
        # The backprop baseline's optimizer space, and eta around the paper's 0.1 (DT) and 1 (CT)
        eta = trial.suggest_float("eta", 0.01, 10.0, log=True)
        return cls(**suggest_optimizer(trial), eta=eta)


def kl_to_prior(u: torch.Tensor, alpha_bar0: torch.Tensor) -> torch.Tensor:
    """KL(N(sqrt(abar_0) u, (1 - abar_0) I) || N(0, I)) of each row of u (B, d), batch mean."""
    d = u.shape[1]
    return 0.5 * (alpha_bar0 * u.pow(2).sum(1) - d * (alpha_bar0 + torch.log1p(-alpha_bar0))).mean()


@register_rule
class NoProp(Rule):
    info = RuleInfo(
        name="noprop",
        title="NoProp (each block denoises a noisy label embedding on its own)",
        citation="Li, Teh & Pascanu 2025, arXiv 2503.24322",
        reverse_ad="within_block",  # each block's own loss, back-propagated inside the block
        backward_locking=False,
        weight_transport=True,  # ordinary backprop inside a block (see the card)
        forward_passes_per_step=1,  # each block sees the batch once
        families=(FAMILY,),
        native={"*": "noprop_dt"},
        native_by=("variant", {"ct": "noprop_ct", "fm": "noprop_fm"}),
        pipeline_note="DT's blocks share the output head and the class embedding, stepped after "
        "every block (T updates per batch, in block order), so its blocks cannot run apart and "
        "stay the same algorithm; CT and FM train one block",
    )
    Hparams = NoPropHparams
    hp: NoPropHparams

    def build(self) -> None:
        net = self._checked_model()
        self.net = net
        trainable = self.hp.embedding != "onehot"
        net.embedding.requires_grad_(trainable)
        groups = {f"block{k}": list(b.parameters()) for k, b in enumerate(net.blocks)}
        if net.schedule is not None:
            groups["block0"] += list(net.schedule.parameters())
        shared = [net.embedding] if trainable else []
        if self.hp.variant != "fm":
            self.head = nn.Linear(net.embed_dim, self.num_classes)  # W_out, b_out
            self.modules["head"] = self.head
            shared += list(self.head.parameters())
        if shared:
            groups["out"] = shared
        self.opts = {name: self.hp.optimizer_for(ps) for name, ps in groups.items()}
        self.prototypes_ready = False

    def _checked_model(self) -> NoPropNet:
        net, hp = self.model, self.hp
        if not isinstance(net, NoPropNet):
            raise ConfigError("noprop trains NoProp networks (noprop_dt, noprop_ct, noprop_fm)")
        name, d, c = net.spec.name, net.embed_dim, self.num_classes
        if net.kind != hp.variant:
            raise ConfigError(
                f"noprop variant={hp.variant} trains noprop_{hp.variant} networks, not {name} "
                f"(or set variant={net.kind})"
            )
        if net.num_classes != c:
            raise ConfigError(
                f"{name} is built for {net.num_classes} classes, the data has {c}: add _c{c} "
                f"to the model name (e.g. noprop_{net.kind}_c{c})"
            )
        pixels = math.prod(net.input_shape)
        if hp.embedding == "onehot" and d != c:
            raise ConfigError(f"one-hot embeddings need d = {c}; {name} has d = {d}")
        if hp.embedding == "prototype" and d != pixels:
            raise ConfigError(f"prototype embeddings need d = {pixels} (add _e{pixels})")
        return net

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return dict(self.opts)

    def begin_phase(self, phase: Phase, train_x: torch.Tensor, train_y: torch.Tensor) -> None:
        if self.hp.embedding != "prototype" or self.prototypes_ready:
            return
        w = self.net.embedding  # each class's mean training image (a class without one: kept)
        sums = torch.zeros_like(w).index_add_(0, train_y, train_x.flatten(1).to(w.dtype))
        counts = torch.bincount(train_y, minlength=w.shape[0]).to(w.dtype)
        with torch.no_grad():
            seen = counts > 0
            w[seen] = sums[seen] / counts[seen, None]
        self.prototypes_ready = True

    def extra_state(self) -> dict[str, Any]:
        return {"prototypes_ready": self.prototypes_ready}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.prototypes_ready = bool(state.get("prototypes_ready", False))

    # ---- training -------------------------------------------------------------------------
    def _randn(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(
            like.shape, generator=self.generator, device=like.device, dtype=like.dtype
        )

    def _rand_times(self, x: torch.Tensor) -> torch.Tensor:
        """t_i = (s + i / B) mod 1, s ~ U[0, 1): each t_i is U[0, 1], and the batch covers
        [0, 1] evenly (the low-discrepancy sampler of Kingma et al. 2021; see the card), (B, 1)."""
        n = x.shape[0]
        s = torch.rand((), generator=self.generator, device=x.device, dtype=x.dtype)
        grid = torch.arange(n, device=x.device, dtype=x.dtype)[:, None] / n
        return torch.remainder(s + grid, 1.0)

    def _output_loss(
        self, y: torch.Tensor, alpha_bar_end: torch.Tensor, alpha_bar0: torch.Tensor
    ) -> torch.Tensor:
        """-log p_out(y | z_end), z_end ~ q(z_end|y), plus KL(q(z_0|y) || N(0, I))."""
        u = self.net.embedding[y]
        z = alpha_bar_end.sqrt() * u + (1 - alpha_bar_end).sqrt() * self._randn(u)
        return F.cross_entropy(self.head(z), y) + kl_to_prior(u, alpha_bar0)

    def _dt_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Block by block, the paper's per-t loss L_t and step (θ_t, then W_out and W_Embed)."""
        net, gen, eta, out = self.net, self.generator, self.hp.eta_value, self.opts["out"]
        ab, steps, total = net.alpha_bar, len(net.blocks), x.new_zeros(())
        for k, block in enumerate(net.blocks):  # block t = k + 1 sees z_{t-1} ~ q(z_{t-1}|y)
            out.zero_grad(set_to_none=True)
            u = net.embedding[y]  # (B, d)
            z = ab[k].sqrt() * u + (1 - ab[k]).sqrt() * self._randn(u)
            u_hat = net.estimate(block(x, z, generator=gen))
            mse = (u_hat - u).pow(2).sum(1).mean()
            loss = 0.5 * steps * eta * net.snr_step[k] * mse + self._output_loss(y, ab[-1], ab[0])
            loss.backward()  # block t's graph is freed before block t + 1 runs
            self.opts[f"block{k}"].step()
            out.step()
            total = total + loss.detach()
        return total / steps  # mean_t L_t: the paper's L with E_t taken over all T blocks

    def _ct_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        net = self.net
        assert net.schedule is not None
        u, t = net.embedding[y], self._rand_times(x)
        gamma, dgamma = net.schedule(t)  # (B, 1) each
        ab = torch.sigmoid(-gamma)
        z = ab.sqrt() * u + (1 - ab).sqrt() * self._randn(u)
        u_hat = net.estimate(net.blocks[0](x, z, t, generator=self.generator))
        snr_rate = (-dgamma * torch.exp(-gamma)).squeeze(1)  # SNR'(t) >= 0
        loss = 0.5 * self.hp.eta_value * (snr_rate * (u_hat - u).pow(2).sum(1)).mean()
        loss.backward()
        ends = torch.sigmoid(-x.new_tensor([GAMMA_MIN, GAMMA_MAX]))  # abar(1), abar(0)
        out = self._output_loss(y, ends[0], ends[1])
        out.backward()
        return loss.detach() + out.detach()

    def _fm_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        net = self.net
        u, t = net.embedding[y], self._rand_times(x)
        z0 = self._randn(u)
        zt = t * u + (1 - t) * z0
        v = net.blocks[0](x, zt, t, generator=self.generator)
        loss = (v - (u - z0)).pow(2).sum(1).mean()
        if net.embedding.requires_grad:  # keeps trainable embeddings apart (see the card)
            loss = loss + F.cross_entropy(self._distance_logits(zt + (1 - t) * v), y)
        loss.backward()
        return loss.detach()

    def train_step(self, batch: Batch) -> torch.Tensor:
        for opt in self.opts.values():
            opt.zero_grad(set_to_none=True)  # before the forward: no stale gradient in the peak
        if self.hp.variant == "dt":
            return self._dt_step(batch.x, batch.y)  # steps inside, block by block
        step = self._ct_step if self.hp.variant == "ct" else self._fm_step
        loss = step(batch.x, batch.y)
        for opt in self.opts.values():
            opt.step()
        return loss

    def start_phase(self, phase: Phase, train_x: torch.Tensor, train_y: torch.Tensor) -> None:
        """The framework's schedule, with DT's shared optimizer (``out``) scheduled over its T
        steps per batch."""
        super().start_phase(phase, train_x, train_y)
        cooldown, drops = self.hp.lr_cooldown, self.hp.drops()
        if self.hp.variant == "dt" and (cooldown or drops):
            total = -(-int(train_x.shape[0]) // self.hp.batch_size) * (phase.max_epochs or 0)
            steps = total * len(self.net.blocks)
            schedule_phase(self.opts["out"], steps, cooldown=cooldown, drops=drops)

    # ---- inference ------------------------------------------------------------------------
    def _distance_logits(self, z: torch.Tensor) -> torch.Tensor:
        """-||z - u_c||^2 for every class c, (B, C)."""
        w = self.net.embedding
        return 2 * z @ w.t() - w.pow(2).sum(1) - z.pow(2).sum(1, keepdim=True)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x, self.hp.inference_steps or None)  # the noise-free chain (see the card)
        return self._distance_logits(z) if self.hp.variant == "fm" else self.head(z)
