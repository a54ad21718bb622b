"""The learning-rule contract: a rule owns its update, the trainer owns the loop and the clock.

A rule is one class in one file under ``bpfree/rules/`` (or any module that is imported),
registered with :func:`register_rule`. It declares a frozen :class:`RuleInfo` (what it is,
what "backprop-free" means for it, its native network per dataset kind) and a frozen
``Hparams`` dataclass (paper defaults and search space). The trainer calls, in order:

    setup(model, num_classes, device, generator)   # attach the body, build heads/optimizers
    for each phase in phases():                     # one for most rules
        start_phase(phase, train_x, train_y)        # inside the timed window: calls the
                                                    # rule's begin_phase, then schedules lr
        train_step(batch) ... per batch             # one update, returns the detached loss
        predict(x) on validation batches            # logits, batch-independent
    state_dict() / load_state_dict() for checkpoints

A rule never times, logs, prints, reads files or calls ``.item()`` inside ``train_step``: any
host synchronisation there would be billed to the rule's training time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar

import torch
from torch import nn

from bpfree.errors import ConfigError
from bpfree.models import MODELS, BlockNet
from bpfree.registry import Registry
from bpfree.rules.hparams import Hparams
from bpfree.rules.toolkit.optim import drop_fractions, schedule_phase

ReverseAD = Literal["none", "within_block", "global"]
ANY_KIND = "*"  # a native network for every image kind
TEXT_KIND = "text"
TRAINABLE_SCOPES = ("all", "head", "lora")


@dataclass(frozen=True)
class RuleInfo:
    """What a rule is, in the terms a reader needs to judge 'backprop-free'."""

    name: str
    title: str
    citation: str
    reverse_ad: ReverseAD  # autograd backward: none, only inside a block/layer, or end to end
    backward_locking: bool  # must a layer wait for the layers above it before updating?
    weight_transport: bool  # does any update use the transpose of a forward weight?
    forward_passes_per_step: int
    families: tuple[str, ...]  # model families the rule can train ("mlp", "cnn")
    # The network the rule is published on, per dataset kind ("grayscale", "color", ...; "*"
    # for any): what `train` and `compare` use unless told otherwise.
    native: Mapping[str, str] = field(default_factory=dict)
    # A setting whose value picks another native network for image data, e.g. ("variant",
    # {"ct": "noprop_ct"}): ``noprop:variant=ct`` then trains noprop_ct without --model.
    native_by: tuple[str, Mapping[str, str]] | None = None
    baseline: bool = False  # the end-to-end backprop baseline every rule is compared with
    rule_version: str = "1"
    # What a run may train (``--trainable``): "all" parameters, only the rule's "head" on a
    # frozen body, or "lora" adapters. A rule offers "head" and "lora" only when its updates
    # leave every parameter with requires_grad=False untouched (the conformance suite checks).
    trainable: tuple[str, ...] = ("all",)
    # Parallel training (engine/pipeline.py). ``pipeline``: "local" (a stage updates its layers
    # on their own losses as each batch arrives: pipeline_units/_input/_step), "backprop" (the
    # stages run by torch.distributed.pipelining: pipeline_units/_forward), "feedback" (update-
    # locked: the last stage sends each batch's output error to every stage, which updates on it
    # at once or late: pipeline_units/_input/_lag/_forward_span/_top/_update; see dfa), or
    # "none", with the reason in ``pipeline_note``. ``data_parallel``: every update is an
    # optimizer step on .grad, so replicas can average gradients before it.
    pipeline: Literal["none", "local", "backprop", "feedback"] = "none"
    pipeline_note: str = "it declares no pipeline schedule"
    data_parallel: bool = False

    def native_model(self, dataset_kind: str, hparams: Mapping[str, Any] | None = None) -> str:
        """The rule's native network for a dataset kind (and, where ``native_by`` says so, for
        the run's settings); ConfigError when it declares none. The "*" entry stands for the
        image kinds: text needs a text model of its own."""
        if self.native_by is not None and dataset_kind != TEXT_KIND:
            key, by_value = self.native_by
            chosen = by_value.get(str((hparams or {}).get(key)))
            if chosen is not None:
                return chosen
        fallback = None if dataset_kind == TEXT_KIND else self.native.get(ANY_KIND)
        model = self.native.get(dataset_kind, fallback)
        if model is None:
            kinds = ", ".join(sorted(self.native)) or "none"
            raise ConfigError(
                f"rule {self.name!r} declares no native network for {dataset_kind} data "
                f"(it has one for: {kinds}); choose one with --model"
            )
        return model


class Batch(NamedTuple):
    x: torch.Tensor  # (B, C, H, W) inputs
    y: torch.Tensor  # (B,) int64 labels
    index: torch.Tensor  # (B,) positions in the training set (for rules that cache features)


@dataclass(frozen=True)
class Phase:
    """A stage of training with its own early stopping (e.g. one layer of a sequential rule).

    The run's budget is a total number of data passes, summed over its phases (``--epochs``).
    A phase either takes a fixed number of them (``max_epochs``: e.g. CaFo-DFA's block
    pretraining, or 1 for a closed-form solve) or, with ``max_epochs=None``, an equal share of
    what the fixed phases leave. The trainer passes ``begin_phase`` the phase with ``max_epochs``
    set to its allotment.
    """

    name: str
    index: int = 0
    max_epochs: int | None = None


class Rule(ABC):
    """Base class of every learning rule. See the module docstring for the contract."""

    info: ClassVar[RuleInfo]
    Hparams: ClassVar[type[Hparams]]

    def __init__(self, hparams: Hparams) -> None:
        self.hp = hparams
        self.model: BlockNet | None = None
        self.modules = nn.ModuleDict()  # everything with parameters: model and rule-owned parts
        self.device = torch.device("cpu")
        self.generator: torch.Generator | None = None
        self.num_classes = 0

    # ---- set-up ---------------------------------------------------------------------------
    def setup(
        self, model: BlockNet, num_classes: int, device: torch.device, generator: torch.Generator
    ) -> None:
        """Attach the model and build rule-owned parts (heads, feedback matrices, optimizers)."""
        if model.family not in self.info.families:
            raise ConfigError(
                f"rule {self.info.name!r} cannot train a {model.family} model "
                f"({model.spec.name}); it supports: {', '.join(self.info.families)}"
            )
        self.model = model.to(device)
        self.modules["model"] = self.model
        self.device = device
        self.generator = generator
        self.num_classes = num_classes
        self.build()
        self.modules.to(device)

    @abstractmethod
    def build(self) -> None:
        """Create heads and optimizers; called by ``setup`` once the model is attached."""

    # ---- training -------------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        """The training stages, each with early stopping of its own, sharing the run's data
        passes (see :class:`Phase`). Reads only ``self.hp`` and ``self.model`` (the budget is
        checked before a run starts, on a model without memory)."""
        return [Phase("train")]

    def begin_phase(self, phase: Phase, train_x: torch.Tensor, train_y: torch.Tensor) -> None:
        """Called at the start of each phase, inside the timed training region."""

    def start_phase(self, phase: Phase, train_x: torch.Tensor, train_y: torch.Tensor) -> None:
        """What the trainer calls at a phase's start: the rule's ``begin_phase``, then the
        step-size schedule of its optimizers over the phase's steps (``lr_cooldown``,
        ``lr_drops``)."""
        self.begin_phase(phase, train_x, train_y)
        cooldown = bool(getattr(self.hp, "lr_cooldown", False))
        drops = drop_fractions(str(getattr(self.hp, "lr_drops", "")))
        if cooldown or drops:
            steps_per_epoch = -(-int(train_x.shape[0]) // self.hp.batch_size)
            for opt in self.optimizers().values():
                total = (phase.max_epochs or 0) * steps_per_epoch
                schedule_phase(opt, total, cooldown=cooldown, drops=drops)

    @abstractmethod
    def train_step(self, batch: Batch) -> torch.Tensor:
        """One parameter update; returns the detached scalar training loss."""

    @abstractmethod
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) for x; a sample's output must not depend on the rest of its batch."""

    def train(self) -> None:
        self.modules.train()

    def eval(self) -> None:
        self.modules.eval()

    # ---- state ----------------------------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers whose state must be checkpointed, by name."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Rule state outside modules and optimizers (buffers that are not parameters)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        del state

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": self.modules.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.modules.load_state_dict(state["modules"])
        for name, opt in self.optimizers().items():
            if name in state["optimizers"]:
                opt.load_state_dict(state["optimizers"][name])
        self.load_extra_state(state["extra"])

    def forward_passes(self) -> int:
        """Forward passes per training step under these settings (the conformance suite checks
        it); ``info.forward_passes_per_step`` unless an option changes it."""
        return self.info.forward_passes_per_step

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.modules.parameters())

    # ---- pipeline stages (info.pipeline; engine/pipeline.py drives them) -------------------
    def pipeline_units(self) -> list[list[nn.Module | torch.Tensor]]:
        """The units a pipeline splits into contiguous stages, in order: the modules and
        tensors each one owns (together, every tensor of ``self.modules``). ConfigError when
        these settings cannot be pipelined."""
        raise ConfigError(f"rule {self.info.name!r}: {self.info.pipeline_note}")

    def pipeline_input(self, batch: Batch) -> torch.Tensor:
        """(local) What the first unit receives for a batch; the only place a stage draws from
        the rule's generator."""
        raise NotImplementedError

    def pipeline_step(
        self, start: int, stop: int, h: torch.Tensor, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(local) Units start..stop-1 take one update on input ``h``: (the detached output
        for the next stage, the sum of their loss contributions to the step's reported loss)."""
        raise NotImplementedError

    def pipeline_forward(self, unit: int, h: torch.Tensor) -> torch.Tensor:
        """(backprop) Unit ``unit``'s forward; the last unit's output is the logits."""
        raise NotImplementedError

    def pipeline_lag(self, stage: int, stages: int) -> int:
        """(feedback) How many more batches stage ``stage`` forwards before it applies a batch's
        error: 0 is the single-process algorithm."""
        raise NotImplementedError

    def pipeline_forward_span(
        self, start: int, stop: int, h: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(feedback) Units start..stop-1 forward: (their output, what their update needs)."""
        raise NotImplementedError

    def pipeline_top(
        self, start: int, saved: list[torch.Tensor], batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(feedback) The last stage: (the error every stage updates on, the loss), before
        any of its units update."""
        raise NotImplementedError

    def pipeline_update(
        self, start: int, saved: list[torch.Tensor], e: torch.Tensor, top: bool = False
    ) -> None:
        """(feedback) A stage's units update on the batch's error (``top``: the last stage,
        after pipeline_top)."""
        raise NotImplementedError


# ---- the registry ---------------------------------------------------------------------------
RULES: Registry[type[Rule]] = Registry("rule")
R = TypeVar("R", bound=type[Rule])


def check_rule_class(cls: type[Rule]) -> None:
    """What registration requires of a rule class; raises TypeError naming the problem."""
    info = getattr(cls, "info", None)
    if not isinstance(info, RuleInfo):
        raise TypeError(f"{cls.__qualname__}: a rule declares `info = RuleInfo(...)`")
    hp = getattr(cls, "Hparams", None)
    if not (isinstance(hp, type) and issubclass(hp, Hparams)):
        raise TypeError(f"rule {info.name!r}: `Hparams` must subclass bpfree.rules.Hparams")
    if not info.native:
        raise TypeError(
            f"rule {info.name!r} declares no native network: set RuleInfo(native={{...}}), "
            "e.g. {'*': 'mlp_2x1000'}"
        )
    by_setting = dict(info.native_by[1]) if info.native_by else {}
    for kind, model in [*info.native.items(), *by_setting.items()]:
        try:
            family = MODELS.get(model).family
        except ConfigError as exc:
            raise TypeError(f"rule {info.name!r}: native[{kind!r}]: {exc}") from None
        if family not in info.families:
            raise TypeError(
                f"rule {info.name!r}: native network {model!r} is a {family} model, "
                f"but the rule trains {', '.join(info.families)} models"
            )
    if "all" not in info.trainable or not set(info.trainable) <= set(TRAINABLE_SCOPES):
        raise TypeError(
            f"rule {info.name!r}: trainable must include 'all' and be among {TRAINABLE_SCOPES}"
        )
    if info.baseline and any(r.info.baseline for _, r in RULES.items()):
        raise TypeError(f"rule {info.name!r}: there is already a baseline rule")


def register_rule(cls: R) -> R:
    """Class decorator: check the rule's declarations and add it to the registry."""
    check_rule_class(cls)
    RULES.register(cls.info.name, cls)
    return cls


def baseline_rule() -> str:
    """The name of the end-to-end backprop baseline (the rule with ``baseline=True``)."""
    for name, cls in RULES.items():
        if cls.info.baseline:
            return name
    raise RuntimeError("no baseline rule is registered")
