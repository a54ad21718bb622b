"""Pieces of rules that send errors through fixed matrices instead of a backward pass.

* :class:`FixedRandom`: fixed random matrices of any shapes, kept as buffers (checkpointed with
  the rule, never trained), drawn from the rule's own generator.
* :func:`output_error`: e = softmax(logits) - onehot(y), the gradient of the summed
  cross-entropy with respect to the logits.
* :func:`relu_mask`: relu'(z) as a boolean mask, from z or from a = relu(z) (the same mask:
  a > 0 exactly where z > 0), so a rule keeps a mask or reuses an activation it stores anyway,
  never a float copy of z.
* :func:`set_linear_grad`: write an explicit update into ``layer.weight.grad`` / ``bias.grad``.
* :func:`dropout_masks`: dropout masks a rule draws itself (to share them between passes).
* :func:`refuse_dropout`: a clear error for a body whose dropout the rule does not model.
* :func:`dense_activations`: the forward pass of an MLP body keeping a_0 .. a_L (the inputs of
  the explicit updates), never z_l.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bpfree.errors import ConfigError
from bpfree.models import BlockNet


class FixedRandom(nn.Module):
    """Fixed random matrices ``self[k]`` of the given shapes, entries ~ U(-bound_k, bound_k).

    Drawn once, in order, from ``generator`` (the rule's, so a seed gives the same matrices) and
    stored as buffers ``b0, b1, ...``: they are saved in checkpoints and never trained.
    """

    def __init__(
        self,
        shapes: Sequence[tuple[int, ...]],
        generator: torch.Generator,
        bounds: float | Sequence[float] = 1.0,
    ) -> None:
        super().__init__()
        self.count = len(shapes)
        if isinstance(bounds, (int, float)):
            bounds = [float(bounds)] * len(shapes)
        for k, (shape, bound) in enumerate(zip(shapes, bounds, strict=True)):
            u = torch.rand(*shape, generator=generator, device=generator.device)
            self.register_buffer(f"b{k}", (2 * u - 1) * bound)  # U(-bound, bound)

    def __getitem__(self, k: int) -> torch.Tensor:
        return getattr(self, f"b{k}")

    def __len__(self) -> int:
        return self.count


def output_error(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """e = softmax(logits) - onehot(y), (B, C): the gradient of the summed cross-entropy."""
    e = torch.softmax(logits, dim=1)
    e[torch.arange(y.shape[0], device=y.device), y] -= 1.0
    return e


def relu_mask(t: torch.Tensor) -> torch.Tensor:
    """relu'(z) as a bool tensor, from z or from relu(z): True where the unit is active."""
    return t > 0


def set_linear_grad(layer: nn.Linear, delta: torch.Tensor, inputs: torch.Tensor) -> None:
    """layer.weight.grad = delta^T inputs / B and layer.bias.grad = mean(delta), explicitly."""
    n = delta.shape[0]
    # (d_out, B) x (B, d_in) -> (d_out, d_in), divided in place: no second weight-sized buffer
    layer.weight.grad = (delta.t() @ inputs).div_(n)
    if layer.bias is not None:
        layer.bias.grad = delta.mean(dim=0)  # (d_out,)


def refuse_dropout(model: BlockNet) -> None:
    """ConfigError for a body with dropout: for rules whose explicit updates do not model its
    masks (a rule that does, such as PEPITA, draws its own)."""
    if any(getattr(block, "p_drop", 0.0) > 0 for block in model.blocks):
        raise ConfigError(
            f"this rule's explicit updates do not model dropout; train {model.spec.name} "
            "with another rule or choose a network without _drop"
        )


def dense_activations(model: BlockNet, x: torch.Tensor) -> list[torch.Tensor]:
    """[a_0, a_1, .., a_L] of an MLP body: a_0 = flattened x, a_l = relu(a_{l-1} W_l^T + b_l),
    each (B, d_l). Call under ``torch.no_grad()``; z_l is freed as soon as a_l exists.
    A body with dropout is refused (:func:`refuse_dropout`)."""
    refuse_dropout(model)
    acts = [x.flatten(1)]
    for block in model.blocks:
        acts.append(torch.relu(block.linear(acts[-1])))
    return acts


def dropout_masks(
    model: BlockNet, batch_size: int, generator: torch.Generator
) -> list[torch.Tensor | None]:
    """One inverted-dropout mask (B, d_l) per hidden block with dropout (None elsewhere): 0 or
    1 / (1 - p), drawn from ``generator``, for rules that reuse one mask in several passes."""
    masks: list[torch.Tensor | None] = []
    for block, d in zip(model.blocks, model.block_dims, strict=True):
        p = float(getattr(block, "p_drop", 0.0))
        if p <= 0:
            masks.append(None)
            continue
        u = torch.rand(batch_size, d, generator=generator, device=generator.device)
        masks.append((u >= p).to(u.dtype).div_(1 - p))
    return masks
