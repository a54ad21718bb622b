"""Pieces of layer-local rules: local linear heads, and a layer-by-layer backward that frees
each layer's graph before the next layer runs.

Memory-faithful local learning (measurement.md): when every layer learns from its own loss on a
detached input, the loss of layer k can be back-propagated (within layer k) as soon as layer k
has run. Its graph (the activations autograd saved) is then freed before layer k+1 runs, so the
activation memory is one layer's, whatever the depth. Summing the layer losses and calling one
backward gives the same gradients but keeps every layer's graph alive at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


def local_heads(dims: Sequence[int], num_classes: int, *, bias: bool = True) -> nn.ModuleList:
    """One linear head (d_k -> C) per layer or block, created in layer order."""
    return nn.ModuleList(nn.Linear(d, num_classes, bias=bias) for d in dims)


def layer_by_layer(
    x: torch.Tensor,
    layers: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    local_loss: Callable[[int, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run ``layers`` in order, each on the detached output of the one below, and back-propagate
    each layer's ``local_loss(k, a_k)`` at once (accumulating into ``.grad``).

    Returns the last (detached) output and the detached local losses. The caller zeroes the
    gradients before and steps the optimizer after; no gradient ever crosses a layer.
    """
    h, losses = x, []
    for k, layer in enumerate(layers):
        a = layer(h.detach())  # (B, d_k); the graph stays inside layer k
        loss = local_loss(k, a)
        loss.backward()  # frees layer k's graph before layer k+1 runs
        losses.append(loss.detach())
        h = a.detach()
    return h, losses
