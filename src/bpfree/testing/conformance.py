"""The conformance suite every learning rule must pass; import it to check your own rule.

    from bpfree.testing.conformance import RuleCase, run_all
    run_all(RuleCase("my_rule", "mlp_2x32"))

Each ``check_*`` function trains a fresh rule on a tiny problem (8x8 ``digits`` by default) and
raises ``AssertionError`` with a message saying what was wrong:

* ``check_loss_falls``: repeated steps on one fixed batch lower the reported loss, per phase;
* ``check_own_parameters``: a step leaves its batch and the global RNG alone, never changes a
  frozen parameter (``requires_grad=False``), and changes only parameters of the phase's
  optimizers (when it has any);
* ``check_predict_independent``: ``predict`` of a sample does not depend on the rest of its batch;
* ``check_deterministic``: the same seed gives identical parameters;
* ``check_state_roundtrip``: a state-dict round trip (as the trainer resumes) gives identical
  predictions and an identical next step;
* ``check_reverse_ad_claim``: a rule declaring ``reverse_ad = "none"`` makes zero autograd
  backward calls (``torch.autograd.backward``/``grad``, ``Tensor.backward``);
* ``check_weight_transport_claim``: a rule declaring ``weight_transport = False`` never uses a
  forward weight of the body or its head in the backward direction (watched at the aten level);
* ``check_backward_locking_claim``: a rule declaring ``backward_locking = False`` computes its
  first block's gradient from no error that came back through an intermediate block above it;
* ``check_forward_passes_claim``: the body's first layer sees at most
  ``rule.forward_passes()`` batches per training step (the declared count under its settings);
* ``check_phases_before_setup``: ``phases()`` needs only the hyperparameters and the model, so
  the budget can be checked before a run (on a model without memory), and gives the same
  phases as the set-up rule; ``check_frozen_body``: with ``trainable="head"`` (where offered)
  the frozen body is left untouched and the head still trains.

Steps are driven as the trainer does (``rule.train()``, ``start_phase``, ``train_step``).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from unittest import mock

import torch

from bpfree.config import TrainConfig
from bpfree.data import DataBundle
from bpfree.engine.build import build_rule, load_data, phase_plan
from bpfree.rules import RULES, Batch, Phase, Rule, baseline_rule
from bpfree.testing.properties import (
    count_rows,
    first_block_locked,
    first_layer,
    watch_locking,
    watch_transport,
)


@lru_cache(maxsize=4)
def tiny_data(name: str = "digits", train_samples: int = 300) -> DataBundle:
    """A small in-memory dataset on the CPU (cached: tests share it)."""
    config = {"rule": baseline_rule(), "dataset": name, "train_samples": train_samples}
    return load_data(TrainConfig.build({**config, "device": "cpu"}))


@dataclass
class RuleCase:
    """One rule, model and hyperparameters on a tiny problem."""

    rule: str
    model: str
    hparams: dict[str, Any] = field(default_factory=dict)
    dataset: str = "digits"
    train_samples: int = 300
    batch_size: int = 32  # overrides the rule's batch size for speed
    steps: int = 6  # steps per phase in the cheap checks

    @property
    def data(self) -> DataBundle:
        return tiny_data(self.dataset, self.train_samples)

    def make(self, seed: int = 0) -> Rule:
        """A rule set up exactly as the trainer does it (init from the seed, own generator)."""
        return build_rule(self.config(seed), self.data)

    def config(self, seed: int = 0) -> TrainConfig:
        return TrainConfig.build(
            {
                "rule": self.rule,
                "model": self.model,
                "dataset": self.dataset,
                "seed": seed,
                "device": "cpu",
                "epochs": 30,
                "hparams": {"batch_size": self.batch_size, **self.hparams},
            }
        )

    def batch(self, step: int, size: int | None = None) -> Batch:
        """Deterministic batch number ``step`` of the training set (with its indices)."""
        data, size = self.data, size or self.batch_size
        g = torch.Generator().manual_seed(1000 + step)
        idx = torch.randperm(data.train_x.shape[0], generator=g)[:size]
        return Batch(data.train_x[idx], data.train_y[idx], idx)

    def __str__(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.hparams.items())
        return f"{self.rule}[{self.model}{',' + extra if extra else ''}]"


def _phases(
    case: RuleCase, rule: Rule, steps: int, after_phase: Callable[[Phase], None] | None = None
) -> list[list[torch.Tensor]]:
    """Drive ``rule`` through all its phases, ``steps`` steps each; returns the losses."""
    data, losses = case.data, []
    for phase in rule.phases():
        rule.train()
        rule.start_phase(phase, data.train_x, data.train_y)
        losses.append([rule.train_step(case.batch(step)) for step in range(steps)])
        if after_phase is not None:
            after_phase(phase)
    return losses


def _params(rule: Rule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in rule.modules.named_parameters()}


def _state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors differ (exactly) between two flat state dicts."""
    return [k for k in a if not torch.equal(a[k], b[k])]


# ---- the checks ---------------------------------------------------------------------------
def check_loss_falls(case: RuleCase, steps: int = 20) -> None:
    """Repeated steps on one fixed batch lower the rule's reported loss, in every phase."""
    rule = case.make()
    data = case.data
    fixed = case.batch(0, size=64)
    for phase in rule.phases():
        rule.train()
        rule.start_phase(phase, data.train_x, data.train_y)
        losses = torch.stack([rule.train_step(fixed) for _ in range(steps)])
        assert torch.isfinite(losses).all(), f"{case}: non-finite loss in phase {phase.name}"
        first, last = losses[:3].mean().item(), losses[-3:].mean().item()
        assert last < first, (
            f"{case}: loss did not fall in phase {phase.name} "
            f"({first:.4f} -> {last:.4f} over {steps} steps on one batch)"
        )


def check_own_parameters(case: RuleCase) -> None:
    """A step touches only what the rule trains in its current phase, and nothing else."""
    rule = case.make()
    data = case.data
    for phase in rule.phases():
        rule.train()
        rule.start_phase(phase, data.train_x, data.train_y)
        for step in range(2):
            batch = case.batch(step)
            x0, y0, i0 = batch.x.clone(), batch.y.clone(), batch.index.clone()
            rng = torch.get_rng_state()
            frozen = {k for k, p in rule.modules.named_parameters() if not p.requires_grad}
            owned = {
                id(p)
                for opt in rule.optimizers().values()
                for g in opt.param_groups
                for p in g["params"]
            }
            names = {id(p): k for k, p in rule.modules.named_parameters()}
            before = _params(rule)
            rule.train_step(batch)
            after = _params(rule)
            changed = set(_state_equal(before, after))
            assert torch.equal(batch.x, x0) and torch.equal(batch.y, y0), (
                f"{case}: train_step modified its batch in place (phase {phase.name})"
            )
            assert torch.equal(batch.index, i0), f"{case}: train_step modified batch.index"
            assert torch.equal(torch.get_rng_state(), rng), (
                f"{case}: train_step drew from the global RNG; use rule.generator"
            )
            assert not changed & frozen, (
                f"{case}: frozen parameters changed in phase {phase.name}: "
                f"{sorted(changed & frozen)}"
            )
            if owned:
                foreign = changed - {names[i] for i in owned if i in names}
                assert not foreign, (
                    f"{case}: parameters outside the phase's optimizers changed in phase "
                    f"{phase.name}: {sorted(foreign)}"
                )
            if step == 0:
                assert changed, f"{case}: the first step of phase {phase.name} changed nothing"


def check_predict_independent(case: RuleCase) -> None:
    """predict(x)[i] is the same whatever else is in the batch, in every phase."""
    rule = case.make()
    data = case.data
    x = data.val_x[:12]

    def probe(phase: Phase) -> None:
        rule.eval()
        with torch.no_grad():
            full = rule.predict(x)  # (12, C)
            noisy = x.clone()
            noisy[1:] = torch.randn(noisy[1:].shape, generator=torch.Generator().manual_seed(3))
            first = rule.predict(noisy)[0]
            singles = torch.cat([rule.predict(x[i : i + 1]) for i in (0, 5, 11)])
        assert full.shape == (12, data.num_classes), f"{case}: predict shape {tuple(full.shape)}"
        for got, want, what in (
            (first, full[0], "other samples replaced by noise"),
            (singles, full[[0, 5, 11]], "samples predicted one at a time"),
        ):
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (
                f"{case}: predict of a sample changed with {what} (phase {phase.name}); "
                "use fixed statistics (BatchNorm in eval mode) at prediction time"
            )

    _phases(case, rule, case.steps, after_phase=probe)


def check_deterministic(case: RuleCase) -> None:
    """Two rules with the same seed, fed the same batches, end with identical state."""
    a, b = case.make(seed=7), case.make(seed=7)
    _phases(case, a, case.steps)
    _phases(case, b, case.steps)
    diff = _state_equal(a.modules.state_dict(), b.modules.state_dict())
    assert not diff, f"{case}: same seed, different parameters: {diff[:5]}"


def check_state_roundtrip(case: RuleCase) -> None:
    """Resuming from a state dict gives identical predictions and an identical next step."""
    for phase_i, phase in enumerate(case.make().phases()):
        a = case.make(seed=1)
        data = case.data
        phases = a.phases()
        for p in phases[:phase_i]:  # complete earlier phases
            a.train()
            a.start_phase(p, data.train_x, data.train_y)
            for step in range(case.steps):
                a.train_step(case.batch(step))
        a.train()
        a.start_phase(phase, data.train_x, data.train_y)
        for step in range(2):
            a.train_step(case.batch(step))
        state = copy.deepcopy(a.state_dict())
        assert a.generator is not None
        gen_state = a.generator.get_state()

        b = case.make(seed=2)  # different init: everything must come from the state
        b.load_state_dict(copy.deepcopy(state))  # the trainer's resume order:
        b.train()
        b.start_phase(phase, data.train_x, data.train_y)  # rebuild the phase's parts,
        b.load_state_dict(copy.deepcopy(state))  # then load their state
        assert b.generator is not None
        b.generator.set_state(gen_state)
        a.eval()
        b.eval()
        x = data.val_x[:16]
        with torch.no_grad():
            pa, pb = a.predict(x), b.predict(x)
        assert torch.equal(pa, pb), f"{case}: predictions differ after a state round trip"
        a.train()
        b.train()
        batch = case.batch(5)
        la, lb = a.train_step(batch), b.train_step(batch)
        assert torch.equal(la, lb), f"{case}: next-step loss differs after a state round trip"
        diff = _state_equal(a.modules.state_dict(), b.modules.state_dict())
        assert not diff, (
            f"{case}: next step differs after a state round trip (phase {phase.name}): {diff[:5]}"
        )


@contextlib.contextmanager
def count_backward_calls() -> Iterator[list[str]]:
    """Count calls of torch.autograd.backward / torch.autograd.grad / Tensor.backward."""
    calls: list[str] = []
    real_backward, real_grad = torch.autograd.backward, torch.autograd.grad
    real_tensor_backward = torch.Tensor.backward

    def backward(*args: Any, **kwargs: Any) -> Any:
        calls.append("torch.autograd.backward")
        return real_backward(*args, **kwargs)

    def grad(*args: Any, **kwargs: Any) -> Any:
        calls.append("torch.autograd.grad")
        return real_grad(*args, **kwargs)

    def tensor_backward(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        calls.append("Tensor.backward")
        return real_tensor_backward(self, *args, **kwargs)

    with (
        mock.patch("torch.autograd.backward", backward),
        mock.patch("torch.autograd.grad", grad),
        mock.patch.object(torch.Tensor, "backward", tensor_backward),
    ):
        yield calls


def check_reverse_ad_claim(case: RuleCase) -> None:
    """A rule that declares reverse_ad="none" makes no autograd backward call at all."""
    rule = case.make()
    with count_backward_calls() as calls:
        _phases(case, rule, case.steps)
    if rule.info.reverse_ad == "none":
        assert not calls, (
            f"{case}: declares reverse_ad='none' but made {len(calls)} autograd backward "
            f"calls ({sorted(set(calls))})"
        )


def check_weight_transport_claim(case: RuleCase) -> None:
    """A rule declaring weight_transport=False never sends an error backwards through a forward
    weight of the body or its head (see :mod:`bpfree.testing.properties`)."""
    rule = case.make()
    if rule.info.weight_transport:
        return
    with watch_transport(rule) as uses:
        _phases(case, rule, 2)
    assert not uses, f"{case}: declares weight_transport=False but used {sorted(set(uses))[:3]}"


def check_backward_locking_claim(case: RuleCase) -> None:
    """A rule declaring backward_locking=False updates its first block from no error that came
    back through the blocks above it (see :mod:`bpfree.testing.properties`)."""
    rule = case.make()
    if rule.info.backward_locking or rule.model is None or len(rule.model.blocks) < 2:
        return
    data = case.data
    for phase in rule.phases():
        rule.train()
        rule.start_phase(phase, data.train_x, data.train_y)
        batch = case.batch(0)
        with watch_locking(rule, batch.y) as watch:
            rule.train_step(batch)
        locked = first_block_locked(rule, watch)
        assert not locked, (
            f"{case}: declares backward_locking=False but block 0's {locked} gradient came back "
            f"through the blocks above it (phase {phase.name})"
        )


def check_forward_passes_claim(case: RuleCase) -> None:
    """The body's first layer sees at most ``rule.forward_passes()`` batches per step."""
    rule = case.make()
    data, steps = case.data, 2
    declared = rule.forward_passes()
    for phase in rule.phases():
        rule.train()
        rule.start_phase(phase, data.train_x, data.train_y)  # (feature caches are built here)
        with count_rows(first_layer(rule)) as rows:
            for step in range(steps):
                rule.train_step(case.batch(step))
        passes = sum(rows) / (steps * case.batch_size)
        assert passes <= declared, (
            f"{case}: declares {declared} forward passes per step but its first layer saw "
            f"{passes:g} batches per step in phase {phase.name}"
        )


def check_phases_before_setup(case: RuleCase) -> None:
    """The budget check's phases (no memory, no set-up) are the set-up rule's phases."""
    planned = [(p.name, p.index) for p in phase_plan(case.config())]
    actual = [(p.name, p.index) for p in case.make().phases()]
    assert planned == actual, f"{case}: phases {actual} before set-up read {planned}"


def check_frozen_body(case: RuleCase) -> None:
    """With ``trainable="head"`` (where offered) a frozen body stays exactly as it was."""
    if "head" not in RULES.get(case.rule).info.trainable:
        return
    rule = build_rule(case.config().replace(trainable="head"), case.data)
    before = _params(rule)
    _phases(case, rule, case.steps)
    changed = _state_equal(before, _params(rule))
    body = [k for k in changed if k.startswith("model.")]
    assert not body, f"{case}: trainable='head' but the frozen body changed: {body[:3]}"
    assert changed, f"{case}: trainable='head' trained nothing"


CHECKS: tuple[Callable[[RuleCase], None], ...] = (
    check_loss_falls,
    check_own_parameters,
    check_predict_independent,
    check_deterministic,
    check_state_roundtrip,
    check_reverse_ad_claim,
    check_weight_transport_claim,
    check_backward_locking_claim,
    check_forward_passes_claim,
    check_phases_before_setup,
    check_frozen_body,
)


def run_all(case: RuleCase) -> None:
    """Run every check on ``case``; raises at the first failure."""
    for check in CHECKS:
        check(case)
