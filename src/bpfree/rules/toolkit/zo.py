"""Zeroth-order building blocks: SPSA directions regenerated from seeds, applied in place.

MeZO's memory trick (Malladi et al. 2023, arXiv 2305.17333): a random direction z over every
trainable tensor is never stored. A step keeps only integer seeds; whenever z is needed (to
perturb, to restore, to update) it is drawn again, tensor by tensor in a fixed order, from a
private ``torch.Generator`` reset to the seed, so at most one tensor's worth of z per seed
exists at a time. MeZO and ZO-Bench reset the *global* RNG (``torch.manual_seed(seed)``);
here every generator is private, so dropout, data augmentation or any other draw between the
perturbation and the update cannot change z, and the caller's RNG is never touched.

* :func:`draw_direction`: z for one tensor, N(0, 1) or Rademacher (+-1) entries;
* :class:`Directions`: walks a fixed list of tensors with one private generator per seed
  (``walk``), and adds sum_i c_i z_i to them in place (``shift_``);
* :func:`draw_seeds`: step seeds from a CPU generator (no device synchronisation);
* :func:`decays`: whether weight decay applies to a tensor (not to 1-D ones: biases, norms).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import torch

Distribution = Literal["gaussian", "rademacher"]
Coefficient = float | torch.Tensor  # a Python number or a 0-d tensor (no host sync needed)
SEED_HIGH = 2**62


def draw_direction(
    like: torch.Tensor, generator: torch.Generator, distribution: Distribution
) -> torch.Tensor:
    """A fresh tensor shaped like ``like`` with i.i.d. N(0, 1) (``gaussian``) or uniform +-1
    (``rademacher``) entries, from ``generator`` only."""
    if distribution == "gaussian":
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    bits = torch.randint(
        0, 2, like.shape, generator=generator, device=like.device, dtype=like.dtype
    )
    return bits.mul_(2).sub_(1)


def draw_seeds(stream: torch.Generator, count: int) -> list[int]:
    """``count`` seeds in [0, 2^62) from ``stream``, a CPU generator (reading them back to the
    host is no device synchronisation)."""
    return torch.randint(0, SEED_HIGH, (count,), generator=stream).tolist()


def decays(param: torch.Tensor) -> bool:
    """Weight decay applies to weight matrices and kernels, not to 1-D tensors (biases and
    normalisation scales and shifts; MeZO skips its "bias" and "layer_norm" parameters)."""
    return param.dim() >= 2


class Directions:
    """Directions z(seed) over a fixed, ordered list of tensors, regenerated on demand.

    ``walk(params, seeds)`` resets one private generator per seed and yields each tensor with
    its z for every seed, in the order of ``params``; the same seeds and tensors give the same
    z bit for bit, whatever else drew random numbers in between.
    """

    def __init__(self, distribution: Distribution) -> None:
        self.distribution: Distribution = distribution
        self._generators: dict[tuple[torch.device, int], torch.Generator] = {}

    def _generator(self, device: torch.device, slot: int) -> torch.Generator:
        key = (device, slot)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device)
        return self._generators[key]

    def walk(
        self, params: Sequence[torch.Tensor], seeds: Sequence[int]
    ) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
        """Each tensor of ``params`` (in order) with ``[z_1, ..., z_k]`` for its entries, z_i
        drawn from seed ``seeds[i]``. The z are fresh tensors the caller may overwrite."""
        if not params:
            return
        devices = {p.device for p in params}
        gens: dict[torch.device, list[torch.Generator]] = {}
        for device in devices:
            gens[device] = [self._generator(device, i) for i in range(len(seeds))]
            for g, seed in zip(gens[device], seeds, strict=True):
                g.manual_seed(seed)
        for p in params:
            yield p, [draw_direction(p, g, self.distribution) for g in gens[p.device]]

    def shift_(
        self, params: Sequence[torch.Tensor], moves: Sequence[tuple[int, Coefficient]]
    ) -> None:
        """theta += sum_i c_i z(seed_i) in place, one tensor at a time, for ``moves`` =
        [(seed_i, c_i), ...]; the adds run in the order of ``moves``."""
        seeds = [seed for seed, _ in moves]
        for p, zs in self.walk(params, seeds):
            for z, (_, c) in zip(zs, moves, strict=True):
                add_scaled_(p, z, c)
            zs.clear()  # free this tensor's z before the next one is drawn


def add_scaled_(target: torch.Tensor, z: torch.Tensor, c: Coefficient) -> None:
    """target += c z in place; z is overwritten when c is a tensor (then c z is formed in z)."""
    if isinstance(c, torch.Tensor):
        target.add_(z.mul_(c))
    else:
        target.add_(z, alpha=c)
