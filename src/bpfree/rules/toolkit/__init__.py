"""The shared toolkit for writing rules: import from here and from ``bpfree.rules.base``,
never from a sibling rule.

* optimizers: :class:`OptimizerSettings` (the Hparams base every rule reuses),
  :func:`make_optimizer`, :func:`suggest_optimizer` (the common search space),
  :func:`schedule_phase` (the step-size cool-down, applied by the framework);
* fixed matrices and explicit updates: :class:`FixedRandom`, :func:`output_error`,
  :func:`relu_mask`, :func:`set_linear_grad`, :func:`dense_activations`;
* local learning: :func:`local_heads`, :func:`layer_by_layer` (frees each layer's graph);
* losses: :func:`sparsemax`, :func:`sparsemax_loss`;
* zeroth order: :class:`Directions` (SPSA directions regenerated from seeds, applied in
  place), :func:`draw_seeds`, :func:`decays`.
"""

from bpfree.rules.hparams import Hparams, at_least, in_range, nonnegative, positive
from bpfree.rules.toolkit.feedback import (
    FixedRandom,
    dense_activations,
    dropout_masks,
    output_error,
    refuse_dropout,
    relu_mask,
    set_linear_grad,
)
from bpfree.rules.toolkit.local import layer_by_layer, local_heads
from bpfree.rules.toolkit.losses import sparsemax, sparsemax_loss
from bpfree.rules.toolkit.optim import (
    OPTIMIZER_FIELDS,
    OPTIONAL_OPTIMIZER_FIELDS,
    OptimizerName,
    OptimizerSettings,
    cooldown_factor,
    make_optimizer,
    schedule_phase,
    suggest_optimizer,
)
from bpfree.rules.toolkit.zo import Directions, Distribution, decays, draw_direction, draw_seeds

__all__ = [
    "OPTIMIZER_FIELDS",
    "OPTIONAL_OPTIMIZER_FIELDS",
    "Directions",
    "Distribution",
    "FixedRandom",
    "Hparams",
    "OptimizerName",
    "OptimizerSettings",
    "at_least",
    "cooldown_factor",
    "decays",
    "dense_activations",
    "draw_direction",
    "draw_seeds",
    "dropout_masks",
    "in_range",
    "layer_by_layer",
    "local_heads",
    "make_optimizer",
    "nonnegative",
    "output_error",
    "positive",
    "refuse_dropout",
    "relu_mask",
    "schedule_phase",
    "set_linear_grad",
    "sparsemax",
    "sparsemax_loss",
    "suggest_optimizer",
]
