"""The learning-rule protocol: a rule owns its update, the trainer owns the loop and the clock.

A rule never times, logs, prints, reads files or calls ``.item()`` inside ``train_step``: any
host synchronisation there would be billed to the rule's training time.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from torch import nn

from bpfree.errors import ConfigError, suggest
from bpfree.models import BlockNet

ReverseAD = Literal["none", "within_block", "global"]


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
    rule_version: str = "1"


def _range(
    low: float | None = None, high: float | None = None, *, low_open: bool = False
) -> dict[str, Any]:
    return {"low": low, "high": high, "low_open": low_open}


def positive(default: float) -> Any:
    """A dataclass field that must be > 0."""
    return dataclasses.field(default=default, metadata=_range(0.0, low_open=True))


def nonnegative(default: float) -> Any:
    return dataclasses.field(default=default, metadata=_range(0.0))


def at_least(default: int, low: int) -> Any:
    return dataclasses.field(default=default, metadata=_range(low))


def in_range(default: float, low: float, high: float, *, low_open: bool = False) -> Any:
    return dataclasses.field(default=default, metadata=_range(low, high, low_open=low_open))


@dataclass(frozen=True)
class Hparams:
    """Base for a rule's frozen hyperparameters. Subclasses add fields with paper defaults."""

    batch_size: int = at_least(128, 1)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], rule: str = "") -> Hparams:
        """Build from overrides; unknown keys and invalid values raise ConfigError."""
        names = cls.field_names()
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in names:
                where = f" for rule {rule!r}" if rule else ""
                hint = suggest(key, names)
                raise ConfigError(
                    f"unknown setting {key!r}{where}{hint}; valid: {', '.join(names)}"
                )
            kwargs[key] = _coerce(key, value, hints[key])
        hp = cls(**kwargs)
        hp.validate()
        return hp

    def validate(self) -> None:
        """Check every field against its declared range; subclasses may add cross-field checks."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            low, high = f.metadata.get("low"), f.metadata.get("high")
            if low is not None and (value < low or (f.metadata.get("low_open") and value == low)):
                op = ">" if f.metadata.get("low_open") else ">="
                raise ConfigError(f"{f.name} must be {op} {low}, got {value}")
            if high is not None and value > high:
                raise ConfigError(f"{f.name} must be <= {high}, got {value}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def suggest(cls, trial: Any) -> Hparams:
        """Sample from the rule's search space (an ``optuna.Trial``). Overridden per rule."""
        raise NotImplementedError(f"{cls.__qualname__} defines no search space")


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value: int, float, true/false, else the string itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def _coerce(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(
                f"{key} must be one of {', '.join(map(repr, allowed))}, got {value!r}"
                + suggest(str(value), map(str, allowed))
            )
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        return _coerce(key, value, args[0])
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        return str(value)
    return value


class Batch(NamedTuple):
    x: torch.Tensor  # (B, C, H, W) inputs
    y: torch.Tensor  # (B,) int64 labels
    index: torch.Tensor  # (B,) positions in the training set (for rules that cache features)


@dataclass(frozen=True)
class Phase:
    """A stage of training with its own early stopping (e.g. one layer of a sequential rule)."""

    name: str
    index: int = 0
    max_epochs: int | None = None  # the phase's own epoch cap (e.g. 1 for a closed-form solve);
    # the run's epoch cap still applies: the phase runs min(max_epochs, config epochs) at most;
    # the trainer passes begin_phase the phase with max_epochs set to that effective cap


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
        """The training stages; each gets the epoch cap and early stopping of its own."""
        return [Phase("train")]

    def begin_phase(self, phase: Phase, train_x: torch.Tensor, train_y: torch.Tensor) -> None:
        """Called at the start of each phase, inside the timed training region."""

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

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.modules.parameters())
