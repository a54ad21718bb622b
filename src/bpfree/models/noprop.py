"""NoProp's networks (Li, Teh & Pascanu 2025, arXiv 2503.24322), and the noise schedules their
chains use. ``noprop_<dt|ct|fm>[_t<T>][_w<width>][_e<embed dim>][_c<classes>]``.

A denoising block sees the image x and a noisy label embedding z (d numbers):

    image path  3 x (conv3x3 -> ReLU -> maxpool2 -> dropout 0.2), 32/64/128 channels, flatten,
                FC -> width, then BatchNorm (dt) or ReLU (ct, fm)
    label path  h1 = ReLU(BN(FC(z))), out = h1 + ReLU(BN(FC(h1)))   (no BN in ct, fm)
    time path   (ct, fm) sinusoidal embedding of 1000 t (64 units) -> FC -> ReLU
    fusion      concatenate -> (FC -> BN -> ReLU) x 2 -> FC to C logits (fm: to d numbers)

as the paper's Fig. 6 is summarised in ``algorithms-more.md`` 4(b); the widths (``width``, 256
by default, the DanielHalachev/NoProp reproduction's) are ours. ``dt`` holds T such blocks
(T = 10), ``ct`` and ``fm`` one time-conditioned block. The model also holds the class embedding
W_Embed (C x d, rows u_y): the identity when d = C (one-hot), else orthogonal rows; the rule
freezes, trains or re-initialises it. ``block_dims`` is [d] * blocks: each block's output is a
z_t of the chain below.

``forward(x)`` is a deterministic end-to-end chain, what the backprop twin (``bp``: one linear
head on it) trains, and what NoProp's own inference is without its noise:

    dt  z_0 = 0;  z_t = a_t u_t + b_t z_{t-1},  u_t = softmax(block_t(x, z_{t-1})) W_Embed
        (t = 1..T: the posterior mean of z_t given z_{t-1} and u_y, with u_t for u_y; T passes)
    ct  z(0) = 0; Euler steps of dz/dt = -gamma'(t)/2 (sqrt(abar) u - abar z), u = the block's
        softmax(logits) W_Embed at (z, t): the probability-flow ODE of q(z_t|y)
    fm  z(0) = 0; Euler steps of dz/dt = v(x, z, t), the block's raw output

with ``steps`` Euler steps (``_t``, 10 by default) for ct and fm. So a twin is the paper's own
"backprop" baseline shape (its DT-like model trained end to end) with the same parameters.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from bpfree.errors import ConfigError
from bpfree.models.base import BlockNet, ModelEntry, ModelSpec

FAMILY = "noprop"
PATTERN = r"noprop_(dt|ct|fm)(?:_t(\d+))?(?:_w(\d+))?(?:_e(\d+))?(?:_c(\d+))?"
DISPLAY = "noprop_<dt|ct|fm>[_t<T>][_w<width>][_e<embed dim>][_c<classes>]"
EXAMPLES = ("noprop_dt", "noprop_ct", "noprop_fm", "noprop_dt_e20")
STEPS, WIDTH, CLASSES = 10, 256, 10
CHANNELS = (32, 64, 128)
P_DROP = 0.2
TIME_DIM = 64
COSINE_OFFSET = 0.008  # s of the cosine schedule (Nichol & Dhariwal 2021)
GAMMA_MAX, GAMMA_MIN = 7.0, -7.0  # ct: gamma = -log SNR at t = 0 (noise) and t = 1 (label)
GAMMA_HIDDEN = 64


# ---- schedules --------------------------------------------------------------------------
def cosine_alpha_bar(steps: int, offset: float = COSINE_OFFSET) -> torch.Tensor:
    """abar_0 .. abar_T (float64), increasing from 0 (noise, t = 0) to just under 1 (label,
    t = T): abar_t = cos^2(pi/2 (1 - t/T + s) / (1 + s)), the cosine schedule run from the
    label end, not renormalised (so SNR(T) stays finite)."""
    t = torch.arange(steps + 1, dtype=torch.float64)
    return torch.cos(0.5 * math.pi * (1 - t / steps + offset) / (1 + offset)) ** 2


def snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    """SNR = abar / (1 - abar)."""
    return alpha_bar / (1 - alpha_bar)


def dt_coefficients(alpha_bar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a_t, b_t, c_t) for t = 1..T from abar_0..abar_T, with alpha_{t-1} = abar_{t-1} /
    abar_t (the paper's q(z_{t-1}|z_t) = N(sqrt(alpha_{t-1}) z_t, (1 - alpha_{t-1}) I)):

        a_t = sqrt(abar_t) (1 - alpha_{t-1}) / (1 - abar_{t-1})
        b_t = sqrt(alpha_{t-1}) (1 - abar_t) / (1 - abar_{t-1})
        c_t = (1 - abar_t) (1 - alpha_{t-1}) / (1 - abar_{t-1})

    the mean (a_t u_y + b_t z_{t-1}) and variance c_t of q(z_t | z_{t-1}, y)."""
    prev, cur = alpha_bar[:-1], alpha_bar[1:]
    alpha_prev = prev / cur
    a = cur.sqrt() * (1 - alpha_prev) / (1 - prev)
    b = alpha_prev.sqrt() * (1 - cur) / (1 - prev)
    c = (1 - cur) * (1 - alpha_prev) / (1 - prev)
    return a, b, c


class GammaSchedule(nn.Module):
    """NoProp-CT's learnable schedule (after Kingma et al. 2021): abar(t) = sigmoid(-gamma(t)),
    SNR(t) = exp(-gamma(t)), gamma(t) = GAMMA_MAX - (GAMMA_MAX - GAMMA_MIN) gbar(t), with
    gbar(t) = (g(t) - g(0)) / (g(1) - g(0)) and g(t) = w t + sum_j v_j sigmoid(u_j t + c_j),
    w, u_j, v_j > 0 (softplus): increasing, so SNR rises from e^-7 to e^7. ``forward`` gives
    gamma(t) and its derivative in closed form."""

    def __init__(self, hidden: int = GAMMA_HIDDEN) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(math.log(math.e - 1)))  # softplus -> 1: linear start
        self.u = nn.Parameter(torch.randn(hidden))
        self.c = nn.Parameter(torch.randn(hidden))
        self.v = nn.Parameter(torch.full((hidden,), -4.0))  # softplus -> 0.018: a small bend

    def _g(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """g(t) and g'(t), (B, 1) each."""
        u, v = F.softplus(self.u), F.softplus(self.v)
        s = torch.sigmoid(t * u + self.c)  # (B, hidden)
        w = F.softplus(self.w)
        return w * t + (s * v).sum(1, keepdim=True), w + (s * (1 - s) * u * v).sum(1, keepdim=True)

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma(t) and gamma'(t) for times t (B, 1) in [0, 1]."""
        g, dg = self._g(t)
        g0, _ = self._g(torch.zeros_like(t[:1]))
        g1, _ = self._g(torch.ones_like(t[:1]))
        span = GAMMA_MAX - GAMMA_MIN
        return GAMMA_MAX - span * (g - g0) / (g1 - g0), -span * dg / (g1 - g0)


def time_features(t: torch.Tensor, dim: int = TIME_DIM) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of 1000 t, t (B, 1) in [0, 1] (positions 0..1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / (half - 1))
    args = 1000.0 * t * freqs.to(t.dtype)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


# ---- the block --------------------------------------------------------------------------
def dropout(h: torch.Tensor, p: float, training: bool, gen: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout; masks from ``gen`` when given (a rule's own generator), else from the
    global RNG (``F.dropout``, as the backprop twin trains)."""
    if not training or p <= 0:
        return h
    if gen is None:
        return F.dropout(h, p, True)
    keep = torch.rand(h.shape, generator=gen, device=h.device, dtype=h.dtype) >= p
    return h * keep.to(h.dtype) / (1 - p)


class DenoiseBlock(nn.Module):
    """u_theta(x, z[, t]) -> logits (B, out); see the module docstring."""

    def __init__(
        self, shape: tuple[int, int, int], embed: int, width: int, out: int, timed: bool
    ) -> None:
        super().__init__()
        c, h, w = shape
        self.convs = nn.ModuleList()
        for ch in CHANNELS:
            self.convs.append(nn.Conv2d(c, ch, kernel_size=3, padding=1))
            c, h, w = ch, h // 2, w // 2

        def norm() -> nn.Module:
            return nn.Identity() if timed else nn.BatchNorm1d(width)

        self.image_fc = nn.Linear(c * h * w, width)
        self.image_out = nn.ReLU() if timed else nn.BatchNorm1d(width)
        self.label_fc1, self.label_norm1 = nn.Linear(embed, width), norm()
        self.label_fc2, self.label_norm2 = nn.Linear(width, width), norm()
        self.time_fc = nn.Linear(TIME_DIM, width) if timed else None
        self.fuse1, self.fuse_norm1 = nn.Linear((3 if timed else 2) * width, width), norm()
        self.fuse2, self.fuse_norm2 = nn.Linear(width, width), norm()
        self.out = nn.Linear(width, out)

    def forward(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        t: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        h = x  # (B, C, H, W)
        for conv in self.convs:
            h = dropout(F.max_pool2d(torch.relu(conv(h)), 2), P_DROP, self.training, generator)
        parts = [self.image_out(self.image_fc(h.flatten(1)))]  # (B, width)
        h1 = torch.relu(self.label_norm1(self.label_fc1(z)))
        parts.append(h1 + torch.relu(self.label_norm2(self.label_fc2(h1))))  # the skip
        if self.time_fc is not None:
            assert t is not None, "a time-conditioned block needs t"
            parts.append(torch.relu(self.time_fc(time_features(t))))
        h = torch.relu(self.fuse_norm1(self.fuse1(torch.cat(parts, dim=1))))
        return self.out(torch.relu(self.fuse_norm2(self.fuse2(h))))


# ---- the network ------------------------------------------------------------------------
class NoPropNet(BlockNet):
    """The denoising blocks, W_Embed and (dt) the fixed schedule or (ct) the learnable one."""

    def __init__(
        self,
        spec: ModelSpec,
        kind: str,
        blocks: list[nn.Module],
        sizes: tuple[int, int, int],  # (steps, embedding dimension d, classes C)
        input_shape: tuple[int, int, int],
    ) -> None:
        steps, embed, classes = sizes
        super().__init__(spec, blocks, [embed] * len(blocks))
        self.kind, self.embed_dim, self.num_classes, self.steps = kind, embed, classes, steps
        self.input_shape = input_shape
        w = torch.empty(classes, embed)
        w = torch.eye(classes) if embed == classes else nn.init.orthogonal_(w)
        self.embedding = nn.Parameter(w)  # W_Embed (C, d)
        self.schedule = GammaSchedule() if kind == "ct" else None
        if kind == "dt":
            ab = cosine_alpha_bar(len(blocks))
            for name, value in zip(("a", "b", "c"), dt_coefficients(ab), strict=True):
                self.register_buffer(f"coef_{name}", value.float(), persistent=False)
            self.register_buffer("alpha_bar", ab.float(), persistent=False)  # abar_0..abar_T
            # SNR(t) - SNR(t-1), t = 1..T, in float64 first (1 - abar_T is 1.6e-4)
            self.register_buffer("snr_step", snr(ab).diff().float(), persistent=False)

    def estimate(self, logits: torch.Tensor) -> torch.Tensor:
        """u_hat = softmax(logits) W_Embed (B, d): a block's estimate of the clean embedding."""
        return torch.softmax(logits, dim=1) @ self.embedding

    def ct_drift(self, t: torch.Tensor, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """dz/dt = -gamma'(t)/2 (sqrt(abar) u - abar z), the probability-flow ODE of
        q(z_t|y) = N(sqrt(abar) u_y, (1 - abar) I) with u in place of u_y."""
        assert self.schedule is not None
        gamma, dgamma = self.schedule(t)
        ab = torch.sigmoid(-gamma)
        return -0.5 * dgamma * (ab.sqrt() * u - ab * z)

    def forward(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """The deterministic chain (module docstring): z at the label end, (B, d)."""
        z = x.new_zeros(x.shape[0], self.embed_dim)
        if self.kind == "dt":
            for k, block in enumerate(self.blocks):
                z = self.coef_a[k] * self.estimate(block(x, z)) + self.coef_b[k] * z
            return z
        n = steps or self.steps
        for i in range(n):
            t = x.new_full((x.shape[0], 1), i / n)
            out = self.blocks[0](x, z, t)
            step = out if self.kind == "fm" else self.ct_drift(t, z, self.estimate(out))
            z = z + step / n
        return z


def build_noprop(
    name: str, kind: str, steps: int, width: int, embed: int, classes: int
) -> ModelEntry:
    what = {"dt": f"{steps} denoising CNN blocks", "ct": "one time-conditioned denoising CNN"}
    description = (
        f"NoProp-{kind.upper()}: {what.get(kind, 'one time-conditioned vector-field CNN')}"
        f" (conv 32/64/128, width {width}), label embedding {classes} x {embed}"
        + ("" if kind == "dt" else f", {steps} Euler steps")
    )

    def build(shape: tuple[int, int, int]) -> BlockNet:
        if shape[1] < 8 or shape[2] < 8:
            raise ConfigError(f"{name} needs images of at least 8x8 pixels, got {shape}")
        out = embed if kind == "fm" else classes
        n = steps if kind == "dt" else 1
        blocks: list[nn.Module] = [
            DenoiseBlock(shape, embed, width, out, timed=kind != "dt") for _ in range(n)
        ]
        spec = ModelSpec(name, FAMILY, description)
        return NoPropNet(spec, kind, blocks, (steps, embed, classes), shape)

    return ModelEntry(name, FAMILY, description, build)


def resolve_noprop(match: re.Match[str]) -> ModelEntry:
    """The entry of a name matching ``PATTERN``: T/steps 1..1000, width 1..4096, embedding
    dimension 1..65536 (default: the class count), classes 2..1000 (default 10)."""
    kind = match.group(1)
    steps, width = int(match.group(2) or STEPS), int(match.group(3) or WIDTH)
    classes = int(match.group(5) or CLASSES)
    embed = int(match.group(4) or classes)
    if not (1 <= steps <= 1000 and 1 <= width <= 4096 and 1 <= embed <= 65536):
        raise ConfigError(f"{match.group(0)}: T 1..1000, width 1..4096, embedding 1..65536")
    if not 2 <= classes <= 1000:
        raise ConfigError(f"{match.group(0)}: classes must be 2..1000")
    return build_noprop(match.group(0), kind, steps, width, embed, classes)
