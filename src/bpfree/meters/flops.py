"""FLOPs of real training steps, counted with ``torch.utils.flop_counter.FlopCounterMode``.

Convention: 2 FLOPs per multiply-add (the counter's own convention for mm/addmm/bmm/conv).
Elementwise work (activations, losses, optimizer arithmetic) is not counted, as in the counter.

The counter only knows matmul-family and convolution ops. Local learning rules often update
weights by hand with ops it does not know, so we add formulas for them (see ``EXTRA_FORMULAS``):
``mv``, ``addmv``, ``addr``, ``dot``/``vdot``, the in-place ``addmm_``/``baddbmm_``/``addbmm_``,
and outer products. ``torch.outer``/``ger``/``einsum('i,j->ij')`` reach the dispatcher as a
broadcasting ``mul`` whose output is larger than both inputs; such a ``mul`` is counted as one
FLOP per output element (a product, no add). A plain elementwise ``mul`` is not counted.

Each counted op is attributed to one bucket:

* ``backward``: executed by the autograd engine (``loss.backward()``),
* ``forward``: executed inside an ``nn.Module`` call outside autograd,
* ``update``: anything else in ``train_step`` (hand-written local updates, feedback products).

The trainer reports ``forward`` as ``train_flops_forward`` and ``backward + update`` as
``train_flops_backward`` (backward/update).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from torch.utils.flop_counter import FlopCounterMode, flop_registry, shape_wrapper

aten = torch.ops.aten

METHOD = "torch.utils.flop_counter.FlopCounterMode"


def _numel(shape: Any) -> int:
    return math.prod(shape) if isinstance(shape, torch.Size) else 1


def _mv_flop(mat: torch.Size, vec: torch.Size, *args: Any, out_shape: Any = None, **kw: Any) -> int:
    m, n = mat
    return 2 * m * n


def _addmv_flop(
    inp: Any, mat: torch.Size, vec: torch.Size, *args: Any, out_shape: Any = None, **kw: Any
) -> int:
    return _mv_flop(mat, vec)


def _addr_flop(
    inp: Any, v1: torch.Size, v2: torch.Size, *args: Any, out_shape: Any = None, **kw: Any
) -> int:
    # input + v1 v2^T: one multiply and one add per element of the (m, n) result.
    return 2 * _numel(v1) * _numel(v2)


def _dot_flop(a: torch.Size, b: torch.Size, *args: Any, out_shape: Any = None, **kw: Any) -> int:
    return 2 * _numel(a)


def _addbmm_flop(
    inp: Any, b1: torch.Size, b2: torch.Size, *args: Any, out_shape: Any = None, **kw: Any
) -> int:
    b, n, k = b1
    return 2 * b * n * k * b2[-1]


def _mul_flop(a: Any, b: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
    """A broadcasting product that is bigger than both factors is an outer product."""
    if not (isinstance(a, torch.Size) and isinstance(b, torch.Size)):
        return 0
    out = _numel(out_shape)
    return out if out > _numel(a) and out > _numel(b) else 0


def _builtin(packet: Any) -> Callable[..., int]:
    return flop_registry[packet]


EXTRA_FORMULAS: dict[Any, Callable[..., int]] = {
    aten.mv: shape_wrapper(_mv_flop),
    aten.addmv: shape_wrapper(_addmv_flop),
    aten.addmv_: shape_wrapper(_addmv_flop),
    aten.addr: shape_wrapper(_addr_flop),
    aten.addr_: shape_wrapper(_addr_flop),
    aten.dot: shape_wrapper(_dot_flop),
    aten.vdot: shape_wrapper(_dot_flop),
    aten.addbmm: shape_wrapper(_addbmm_flop),
    aten.addbmm_: shape_wrapper(_addbmm_flop),
    aten.mul: shape_wrapper(_mul_flop),
    aten.addmm_: _builtin(aten.addmm),
    aten.baddbmm_: _builtin(aten.baddbmm),
    aten._addmm_activation: _builtin(aten.addmm),
}


# The id of the autograd graph task running on this thread, -1 outside ``backward()``.
_graph_task_id: Callable[[], int] = getattr(torch._C, "_current_graph_task_id", lambda: -1)


@dataclass
class FlopCounts:
    forward: int = 0
    backward: int = 0
    update: int = 0

    @property
    def total(self) -> int:
        return self.forward + self.backward + self.update


@contextmanager
def count_flops() -> Iterator[FlopCounts]:
    """Count the FLOPs of everything run inside the block, split into forward/backward/update."""
    counts = FlopCounts()
    depth = [0]

    def enter(module: Any, args: Any) -> None:
        depth[0] += 1

    def leave(module: Any, args: Any, out: Any) -> None:
        depth[0] -= 1

    def attribute(formula: Callable[..., int]) -> Callable[..., int]:
        def counted(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
            n = int(formula(*args, out_val=out_val, **kwargs))
            if _graph_task_id() != -1:
                counts.backward += n
            elif depth[0] > 0:
                counts.forward += n
            else:
                counts.update += n
            return n

        counted._get_raw = True  # type: ignore[attr-defined]  # formulas are already wrapped
        return counted

    mapping = {k: attribute(f) for k, f in {**flop_registry, **EXTRA_FORMULAS}.items()}
    pre = register_module_forward_pre_hook(enter)
    post = register_module_forward_hook(leave)
    try:
        with FlopCounterMode(display=False, custom_mapping=mapping):
            yield counts
    finally:
        pre.remove()
        post.remove()
