"""Checks of a rule's declared properties that the conformance suite runs (with
``check_reverse_ad_claim`` in :mod:`bpfree.testing.conformance`):

* ``check_weight_transport_claim``: a rule declaring ``weight_transport = False`` never uses a
  forward weight of the body (or of its ``head``) in the backward direction. Every aten matrix
  product and convolution a step dispatches is watched (``TorchDispatchMode``, so autograd's own
  backward kernels are seen too); an operand that shares storage with a weight W (out, in) and
  is contracted over W's *output* dimension (``delta @ W``, a convolution's input gradient with
  W, a transposed convolution with W) carries an error backwards through W.
* ``check_backward_locking_claim``: a rule declaring ``backward_locking = False`` computes the
  first block's gradient from no error that went back through an intermediate block above it
  (:class:`LockingWatch` tags every tensor with its dependencies; the output error itself may
  depend on the whole forward pass: that is update locking, not backward locking);
* ``check_forward_passes_claim``: the rows that go through the body's first weighted layer per
  training step, in units of the batch, are at most the declared ``forward_passes_per_step``
  (a rule that caches features, such as CaFo, may pass fewer).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bpfree.rules import Rule

aten = torch.ops.aten
_MATMULS = {aten.mm.default: (0, 1), aten.bmm.default: (0, 1), aten.addmm.default: (1, 2)}


def forward_weights(rule: Rule) -> dict[int, tuple[str, torch.Tensor]]:
    """Storage address -> (name, weight) for every Linear/Conv weight of the body and of the
    rule's ``head`` (if it has one)."""
    assert rule.model is not None
    modules: list[tuple[str, nn.Module]] = [("model", rule.model)]
    head = getattr(rule, "head", None)
    if isinstance(head, nn.Module):
        modules.append(("head", head))
    found = {}
    for prefix, module in modules:
        for name, sub in module.named_modules():
            if isinstance(sub, (nn.Linear, nn.Conv2d)) and min(sub.weight.shape[:2]) > 1:
                w = sub.weight
                label = ".".join(part for part in (prefix, name, "weight") if part)
                found[w.untyped_storage().data_ptr()] = (label, w)
    return found


def _storage(t: Any) -> int | None:
    if not isinstance(t, torch.Tensor):
        return None
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # wrapped tensors (functorch) have no storage
        return None


class TransportWatch(TorchDispatchMode):
    """Records the forward weights an op uses in the backward direction (see the module doc)."""

    def __init__(self, weights: dict[int, tuple[str, torch.Tensor]]) -> None:
        super().__init__()
        self.weights = weights
        self.uses: list[str] = []

    def _weight(self, t: Any) -> tuple[str, torch.Tensor] | None:
        key = _storage(t)
        return None if key is None else self.weights.get(key)

    def _matmul(self, a: Any, b: Any) -> None:
        for operand, contracted in ((a, a.dim() - 1), (b, b.dim() - 2)):
            found = self._weight(operand)
            if found is None or operand.dim() < 2:
                continue
            name, w = found
            # the weight (out, in) is contiguous: its input dimension has stride 1
            if operand.stride(contracted) != 1 and operand.size(contracted) == w.shape[0]:
                self.uses.append(f"{name} contracted over its output dimension")

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _MATMULS:
            i, j = _MATMULS[func]
            self._matmul(args[i], args[j])
        elif func is aten.convolution_backward.default:
            found = self._weight(args[2])
            if found is not None and args[-1][0]:  # output_mask[0]: the input's gradient
                self.uses.append(f"{found[0]} in a convolution's input gradient")
        elif func is aten.convolution.default and args[6]:  # transposed convolution
            found = self._weight(args[1])
            if found is not None:
                self.uses.append(f"{found[0]} in a transposed convolution")
        return func(*args, **kwargs)


@contextmanager
def watch_transport(rule: Rule) -> Iterator[list[str]]:
    """The backward uses of ``rule``'s forward weights made inside the block."""
    with TransportWatch(forward_weights(rule)) as watch:
        yield watch.uses


def first_layer(rule: Rule) -> nn.Module:
    """The body's first Linear or Conv2d (every forward pass goes through it)."""
    assert rule.model is not None
    for sub in rule.model.blocks[0].modules():
        if isinstance(sub, (nn.Linear, nn.Conv2d)):
            return sub
    raise AssertionError("the body's first block has no Linear or Conv2d layer")


@contextmanager
def count_rows(module: nn.Module) -> Iterator[list[int]]:
    """Rows (samples) through ``module``'s forward while inside the block."""
    rows: list[int] = []

    def hook(mod: nn.Module, inputs: tuple[Any, ...]) -> None:
        rows.append(int(inputs[0].shape[0]))

    handle = module.register_forward_pre_hook(hook)
    try:
        yield rows
    finally:
        handle.remove()


class LockingWatch(TorchDispatchMode):
    """Tags every tensor a step computes with what it depends on, by storage, through every aten
    op (autograd's kernels included):

    * ``yd``: depends on the labels;
    * ``up``: the highest body block whose parameters it depends on; the rule's own parameters
      outside the body (its head, predictors, local projections) count as the output level L,
      one past the last block (fixed buffers, such as feedback matrices, count as none);
    * ``locked``: somewhere in its history a label-dependent op (an error signal) combined with
      a label-free quantity of an intermediate upper block (1 <= up < L): an error that went
      back through the layers above block 0 rather than straight from the output.
    """

    def __init__(self, rule: Rule, y: torch.Tensor) -> None:
        super().__init__()
        assert rule.model is not None
        self.top = len(rule.model.blocks)
        self.tags: dict[int, tuple[bool, int, bool]] = {}
        for p in rule.modules.parameters():  # heads, predictors, projections: output level
            self.tags[p.untyped_storage().data_ptr()] = (False, self.top, False)
        for k, block in enumerate(rule.model.blocks):
            for p in block.parameters():
                self.tags[p.untyped_storage().data_ptr()] = (False, k, False)
        self.tags[y.untyped_storage().data_ptr()] = (True, -1, False)

    def tag(self, t: torch.Tensor) -> tuple[bool, int, bool]:
        key = _storage(t)
        return (False, -1, False) if key is None else self.tags.get(key, (False, -1, False))

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)]
        tags = [self.tag(x) for x in inputs]
        yd = any(t[0] for t in tags)
        up = max((t[1] for t in tags), default=-1)
        locked = any(t[2] for t in tags) or (
            yd and any(not t[0] and 1 <= t[1] < self.top for t in tags)
        )
        for o in tree_flatten(out)[0]:  # every output: a freed storage's address is reused
            key = _storage(o)
            if key is not None:
                self.tags[key] = (yd, up, locked)
        return out


@contextmanager
def watch_locking(rule: Rule, y: torch.Tensor) -> Iterator[LockingWatch]:
    """Tag the tensors computed inside the block (see :class:`LockingWatch`)."""
    with LockingWatch(rule, y) as watch:
        yield watch


def first_block_locked(rule: Rule, watch: LockingWatch) -> list[str]:
    """The first block's parameters whose gradient came back through the layers above it."""
    assert rule.model is not None
    return [
        name
        for name, p in rule.model.blocks[0].named_parameters()
        if p.grad is not None and watch.tag(p.grad)[2]
    ]
