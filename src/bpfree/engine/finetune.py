"""Fine-tuning: start a body from a finished run's weights, and choose what trains.

* ``init_from = RUN_DIR``: the body's weights from ``RUN_DIR/model.pt`` (what the run's rule
  saved: its modules; the body is the ``model.`` part). The run must be a completed one of the
  same model. Its linear ``head`` is loaded too when the new rule's head has the same shape
  (e.g. a linear probe, then zeroth-order fine-tuning from it, as LP-FT); else the new rule's
  head is its own, drawn from the seed.
* ``trainable``: ``all`` (every parameter), ``head`` (the body frozen: requires_grad False; a
  rule adds and trains its head), ``lora`` (LoRA adapters through the ``peft`` library on the
  attention's query and value projections, rank ``lora_rank``, scale ``lora_alpha / r``; the
  body's own weights frozen; B = 0 at the start, so the network starts as the pretrained one).

A rule that offers ``head`` or ``lora`` (``RuleInfo.trainable``) leaves every parameter with
requires_grad False untouched; the backprop twin fine-tunes the same scope from the same start,
since both are built from one configuration.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bpfree.config import TrainConfig
from bpfree.errors import ConfigError
from bpfree.models import BlockNet

LORA_TARGETS = ("query", "value")  # MeZO's and ZO-Bench's LoRA targets (attention q and v)


def load_body(model: BlockNet, run_dir: str | Path, model_name: str) -> dict[str, torch.Tensor]:
    """Load the body weights of the finished run in ``run_dir`` into ``model``; returns the
    run's saved tensors (its head may be loaded too, once the new rule has built its own)."""
    run = Path(run_dir).expanduser()
    config_path, weights = run / "config.json", run / "model.pt"
    if not weights.is_file():
        raise ConfigError(f"init_from {run}: no model.pt (only a completed run keeps its weights)")
    try:
        source = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"init_from {run}: cannot read config.json ({exc})") from None
    if not isinstance(source, dict) or source.get("model") != model_name:
        other = source.get("model") if isinstance(source, dict) else None
        raise ConfigError(f"init_from {run}: that run trained {other!r}, not {model_name!r}")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file: name it, never a traceback
        raise ConfigError(f"init_from {weights}: cannot load ({type(exc).__name__})") from None
    body = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(body, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"init_from {weights}: the weights do not fit {model_name} "
            f"({len(missing)} missing, {len(unexpected)} unexpected tensors)"
        )
    return state


def load_head(modules: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Give the rule's ``head`` the saved run's head when both have one of the same shape (a
    linear probe to start zeroth-order fine-tuning from, say); True when loaded. A head of
    another shape (other classes) stays the rule's own fresh one."""
    mine = {k: v for k, v in modules.state_dict().items() if k.startswith("head.")}
    saved = {k: v for k, v in state.items() if k.startswith("head.")}
    if not mine or mine.keys() != saved.keys():
        return False
    if any(mine[k].shape != saved[k].shape for k in mine):
        return False
    with torch.no_grad():
        for name, p in modules.named_parameters():
            if name in saved:
                p.copy_(saved[name])
    return True


def apply_trainable(model: BlockNet, config: TrainConfig) -> None:
    """Freeze what ``config.trainable`` leaves out; add LoRA adapters for ``lora``."""
    if config.trainable == "all":
        return
    for p in model.parameters():
        p.requires_grad_(False)
    if config.trainable == "head":
        return
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ConfigError(
            "trainable='lora' needs the `peft` library: pip install 'bpfree[text]'"
        ) from None
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        target_modules=list(LORA_TARGETS),
        lora_dropout=0.0,
        bias="none",
    )
    try:
        inject_adapter_in_model(lora, model)
    except ValueError as exc:
        raise ConfigError(f"LoRA cannot adapt {model.spec.name}: {exc}") from None
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
