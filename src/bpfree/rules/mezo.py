"""MeZO — Malladi et al. 2023, "Fine-Tuning Language Models with Just Forward Passes", arXiv
2305.17333 (princeton-nlp/MeZO) — with the ZO-Bench optimizer variants of Zhang et al. 2024,
"Revisiting Zeroth-Order Optimization for Memory-Efficient LLM Fine-Tuning: A Benchmark",
arXiv 2402.11592 (ZO-Bench/ZO-LLM, ``zo-bench/trainer.py``).

theta is every trainable tensor (requires_grad=True) of the body and its linear head, in a
fixed order; L(theta) the batch's mean cross-entropy, evaluated in eval mode (dropout off,
BatchNorm on its running statistics) under no_grad. Per step, q seeds s_i give directions
z_i = z(s_i) with N(0, 1) (``distribution=gaussian``) or +-1 (``rademacher``) entries:

    two_side:  g_i = (L(theta + eps z_i) - L(theta - eps z_i)) / (2 eps)     2 passes per seed
    one_side:  g_i = (L(theta + eps z_i) - L(theta)) / eps                   1 + 1 shared
    G = (1/q) sum_i g_i z_i                 (E[z z^T] = I: E[G] = grad L + O(eps^2) / O(eps))

in place (MeZO's trick): theta += eps z_i; L+; theta -= 2 eps z_i; L-; theta += eps z_i, with
z_i drawn again, tensor by tensor, from a private generator reset to s_i each time it is
needed. ``variant`` (eta = lr, lambda = weight_decay, zero for 1-D tensors):

  * ``sgd`` (MeZO = ZO-SGD): theta <- theta - eta (G + lambda theta), in place, tensor by tensor;
    no ``.grad`` and no gradient-sized buffer: at most one tensor's z per seed exists.
  * ``sign`` (ZO-SGD-Sign): as sgd with (1/q) sum_i sign(g_i) z_i: the sign of the *scalar*
    projected gradient times z, as ZO-Bench's code does (not sign(G) entrywise).
  * ``momentum`` (ZO-SGD-MMT): torch SGD with momentum (0.9, ZO-Bench's sweep) on grad = G.
  * ``adam`` (ZO-Adam): torch Adam (``optimizer=adamw``: AdamW) on grad = G.
  * ``conservative`` (ZO-SGD-Cons): L0 = L(theta), then G; tries theta - eta G and theta + eta G
    and keeps whichever of the three points has the lowest loss, with ZO-Bench's tie-breaks.

Forward passes per step: 2q (two_side) or q + 1 (one_side); conservative adds 2 trial passes,
and L0 when two_side (5 for the defaults). The reported loss is L(theta) before the update:
L0 where it is evaluated (one_side, conservative), else the mean of the 2q perturbed losses
(L(theta) + O(eps^2)); MeZO and ZO-Bench log L(theta + eps z_1).

Restoring is not bit-exact: theta + eps z - 2 eps z + eps z rounds three times, so each entry
comes back within 2^-22 (|theta| + 2 eps |z|) (float32: a few ulps), as in MeZO. Exactness would
need a parameter-sized copy, the memory the method exists to save; the rounding errors are
zero-mean and ~ulp sqrt(steps) after many steps, far below a useful step eta G. The same seed
gives the same bits, so runs and resumes are reproducible.

For momentum and adam every trainable tensor has its own torch optimizer, given grad = G for
that tensor alone, stepped, and its grad set back to None (ZO-Bench's ``param.grad = g z;
optimizer.step(); param.grad = None``): one tensor's gradient exists at a time, the optimizer
state (momentum 1x, Adam 2x the parameters) is exact per tensor, and the framework's step-size
schedule (a pre-step hook) advances once per step. ZO-Bench steps one optimizer once per
tensor, which a schedule would advance once per tensor; it asserts a constant schedule. sgd,
sign and conservative keep one momentum-free torch SGD only as the holder of the step size:
its ``step()`` is called with no gradient set (an update of nothing that runs the schedule's
hook: ``lr_cooldown``, ``lr_drops``) and the in-place update reads the step size from it.

Defaults and sources: eps 1e-3 (MeZO; ZO-Bench ``run.py``), q 1, two_side, gaussian, weight
decay 0 and a constant step size (ZO-Bench sweeps), batch 64 (MeZO's RoBERTa-large script;
its OPT scripts and ZO-Bench use 16). lr 1e-4 is for training an MLP from scratch (hand-picked,
below); for fine-tuning, MeZO recommends lr 1e-6 with eps 1e-3 (full), 1e-4 with eps 1e-2
(LoRA), 1e-2 with eps 1e-1 (prefix) (MeZO issue #7, large_models README). ``suggest`` follows
ZO-Bench's grids: lr log-uniform in [1e-8, 1e-3] (its grids span 1e-8 .. 1e-4 for LLM
fine-tuning; widened for from-scratch nets), eps from {1e-2, 1e-3, 1e-4, 1e-5} (ZO-SGD/Adam
{1e-3, 1e-4, 1e-5}, Cons {1e-2, 1e-3, 1e-4}), batch from {16, 64, 128}.
The from-scratch lr was picked by hand on Fashion-MNIST (all 54,000 training images,
mlp_2x1000, batch 64, eps 1e-3, seed 0): after 2 passes lr 3e-5, 1e-4 and 3e-4 reached 20.5%,
51.6% and 62.5% validation accuracy and 1e-3 diverged in pass 1; 3e-4 then diverged in pass 3
(seeds 0 and 1) and 2e-4 in pass 8 (best 68.6%, pass 5), while 1e-4 was still improving after
10 passes (68.6%); longer runs are untested. As with ``fg`` (the same estimator as eps -> 0),
E|G|^2 is about n |grad L|^2 for n parameters, so stable steps are far below backprop's. The
one default serves every variant, though momentum's effective step is ~10x larger and sign and
adam move each entry by about lr per step: tune lr per variant (``compare --tune``).

Deviations from MeZO's and ZO-Bench's code:
  * Private generators: both reset the global RNG (``torch.manual_seed(seed)``, seed from
    numpy's global RNG). Here z comes from private generators, and the step seeds from a CPU
    generator seeded once from the rule's generator at set-up (checkpointed; reading seeds
    back never synchronises a GPU).
  * Weight decay is skipped by shape (1-D tensors), not by name ("bias", "layer_norm");
    ZO-Bench passes no weight decay to its optimizers at all. The default 0 matches both.
  * q > 1 averages the q estimates and steps once (G above), with the q generators walking the
    tensors in lockstep: one tensor's z per seed exists at a time. ZO-Bench's q > 1 path
    (``zo_step_v1``) forms the same average in a full-size ``.grad`` ("not memory efficient").
  * one_side evaluates L(theta) once per step, shared by the q seeds (ZO-Bench evaluates it
    again after each -eps z: the same point up to rounding): q + 1 passes, not 2q.
  * sign and conservative step with momentum-free SGD, as their names say; ZO-Bench's code
    steps whatever ``--optimizer`` selects, whose default (adamw) keeps HF's AdamW.
  * conservative takes no weight decay (refused); the kept point is chosen on the device (a
    final walk moves from theta + eta G by 0, 1 or 2 times -eta G), so no host sync.
  * z is drawn three times in a two_side q=1 step, not four: the restoring +eps z_q shares
    its regeneration with the update (and a seed's restore with the next seed's perturbation);
    the adds are the same, in the same order (conservative folds it into its first trial move).
  * A body held in fp16/bf16 is converted to fp32 at set-up: at eps = 1e-3, eps z is about one
    fp16 ulp for weights near 1 (2^-10), so the perturbation and its restore would round by as
    much as the perturbation itself (MeZO issue #42, ZO-LLM #13). It costs fp32 weight memory.
  * BatchNorm bodies: the passes run in eval mode (as MeZO's ``zo_forward``), so the running
    statistics are never updated and BatchNorm acts as the fixed affine map of its initial
    statistics, in training and prediction alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bpfree.errors import ConfigError
from bpfree.rules.base import Batch, Rule, RuleInfo, register_rule
from bpfree.rules.toolkit import (
    Directions,
    Distribution,
    OptimizerName,
    OptimizerSettings,
    at_least,
    decays,
    draw_seeds,
    make_optimizer,
    nonnegative,
    positive,
)

Variant = Literal["sgd", "momentum", "sign", "conservative", "adam"]
Perturbation = Literal["two_side", "one_side"]
Move = tuple[int, float | torch.Tensor]  # (seed, coefficient): theta += c z(seed)
LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class MeZOHparams(OptimizerSettings):
    batch_size: int = at_least(64, 1)  # MeZO's RoBERTa-large runs (medium_models/mezo.sh)
    lr: float = positive(1e-4)  # from-scratch MLPs (see the card); MeZO FT: 1e-6 full, 1e-4 LoRA
    weight_decay: float = nonnegative(0.0)  # MeZO's default; ZO-Bench's sweeps
    optimizer: OptimizerName = "sgd"  # set by variant: adam for variant=adam (or adamw)
    momentum: float = nonnegative(0.0)  # set by variant: 0.9 for variant=momentum (ZO-Bench)
    variant: Variant = "sgd"  # MeZO = ZO-SGD
    eps: float = positive(1e-3)  # MeZO; ZO-Bench run.py
    perturbation: Perturbation = "two_side"  # ZO-Bench's default
    q: int = at_least(1, 1)  # seeds per step (n-SPSA)
    distribution: Distribution = "gaussian"  # MeZO's N(0, I)

    def __post_init__(self) -> None:
        # the variant names the torch optimizer: fill in the fields the twin takes over
        if self.variant == "adam" and self.optimizer == "sgd":
            object.__setattr__(self, "optimizer", "adam")
        if self.variant == "momentum" and self.momentum == 0.0:
            object.__setattr__(self, "momentum", 0.9)

    def validate(self) -> None:
        super().validate()
        v = self.variant
        if v == "adam" and self.optimizer == "sgd":
            raise ConfigError("variant=adam steps torch Adam: optimizer must be adam or adamw")
        if v != "adam" and self.optimizer != "sgd":
            raise ConfigError(
                f"variant={v} is an SGD update; optimizer={self.optimizer} needs variant=adam"
            )
        if v != "momentum" and self.momentum != 0.0:
            raise ConfigError(f"momentum={self.momentum} needs variant=momentum (ZO-SGD-MMT)")
        if v == "conservative" and self.weight_decay != 0.0:
            raise ConfigError("variant=conservative takes no weight decay (as ZO-Bench's)")

    @classmethod
    def suggest(cls, trial: Any) -> MeZOHparams:
        return cls(
            lr=trial.suggest_float("lr", 1e-8, 1e-3, log=True),
            eps=trial.suggest_categorical("eps", [1e-2, 1e-3, 1e-4, 1e-5]),
            batch_size=trial.suggest_categorical("batch_size", [16, 64, 128]),
        )


@register_rule
class MeZO(Rule):
    info = RuleInfo(
        name="mezo",
        title="MeZO: zeroth-order SGD (SPSA from two forward passes, in place) and ZO-Bench's "
        "variants",
        citation="Malladi et al. 2023, arXiv 2305.17333; Zhang et al. 2024, arXiv 2402.11592",
        reverse_ad="none",  # forward passes only
        backward_locking=False,  # every tensor updates from one scalar after the passes
        weight_transport=False,
        forward_passes_per_step=2,  # two_side, q = 1; forward_passes() for the options
        families=("mlp", "cnn", "text"),
        # from scratch on images (the test); its home is fine-tuning a text encoder
        native={"*": "mlp_2x1000", "text": "minilm_l6"},
        trainable=("all", "head", "lora"),  # only requires_grad tensors are perturbed/updated
    )
    Hparams = MeZOHparams
    hp: MeZOHparams

    def build(self) -> None:
        assert self.model is not None and self.generator is not None
        self.head = nn.Linear(self.model.out_dim, self.num_classes, bias=self.model.bias)
        self.modules["head"] = self.head
        if any(p.dtype in LOW_PRECISION for p in self.modules.parameters()):
            self.modules.float()  # see the card: perturb and restore in fp32
        self.names = [name for name, _ in self.modules.named_parameters()]
        self.params = list(self.modules.parameters())  # the fixed order z is drawn in
        self.directions = Directions(self.hp.distribution)
        gen = self.generator
        seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item())
        self.seeds = torch.Generator().manual_seed(seed)  # step seeds: CPU, checkpointed
        if self.hp.variant in ("momentum", "adam"):
            self.opts = [  # one per tensor, in the order of self.params (no id(): copies)
                make_optimizer(self.hp.optimizer, [p], self.hp.lr, self._decay(p), self.hp.momentum)
                for p in self.params
            ]
        else:  # one momentum-free SGD: the holder of the (scheduled) step size
            groups = [
                {"params": ps, "weight_decay": wd}
                for ps, wd in (
                    ([p for p in self.params if decays(p)], self.hp.weight_decay),
                    ([p for p in self.params if not decays(p)], 0.0),
                )
                if ps
            ]
            self.opt = torch.optim.SGD(groups, lr=self.hp.lr, momentum=0.0)
            self.group = [0 if decays(p) or len(groups) == 1 else 1 for p in self.params]

    def _decay(self, p: torch.Tensor) -> float:
        return self.hp.weight_decay if decays(p) else 0.0

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if self.hp.variant in ("momentum", "adam"):
            return {f"opt.{n}": o for n, o in zip(self.names, self.opts, strict=True)}
        return {"opt": self.opt}

    def extra_state(self) -> dict[str, Any]:
        return {"seeds": self.seeds.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.seeds.set_state(state["seeds"])

    def forward_passes(self) -> int:
        q, two = self.hp.q, self.hp.perturbation == "two_side"
        passes = 2 * q if two else q + 1
        if self.hp.variant == "conservative":
            passes += 2 + (1 if two else 0)  # the two trials, and L0 unless one_side has it
        return passes

    def _loss(self, batch: Batch) -> torch.Tensor:
        assert self.model is not None
        return F.cross_entropy(self.head(self.model(batch.x)), batch.y)

    @torch.no_grad()
    def train_step(self, batch: Batch) -> torch.Tensor:
        active = [i for i, p in enumerate(self.params) if p.requires_grad]
        params = [self.params[i] for i in active]
        seeds = draw_seeds(self.seeds, self.hp.q)
        was_training = self.modules.training
        self.modules.eval()  # MeZO's zo_forward: dropout off
        try:
            grads, loss, restore = self._estimate(params, seeds, batch)
            if self.hp.variant == "conservative":
                self._conservative(params, seeds, grads, restore, batch, loss)
            elif self.hp.variant in ("momentum", "adam"):
                self._optimizer_update(active, seeds, grads, restore)
            else:
                self._sgd_update(active, seeds, grads, restore)
        finally:
            self.modules.train(was_training)
        return loss

    def _estimate(
        self, params: list[torch.Tensor], seeds: list[int], batch: Batch
    ) -> tuple[list[torch.Tensor], torch.Tensor, float]:
        """The projected gradients g_i, the loss to report, and the multiple of eps z_q still to
        add to theta (restored by the next walk over the tensors)."""
        eps, two = self.hp.eps, self.hp.perturbation == "two_side"
        base = None if two and self.hp.variant != "conservative" else self._loss(batch)
        grads, seen, pending = [], [], []
        for seed in seeds:
            self.directions.shift_(params, [*pending, (seed, eps)])
            plus = self._loss(batch)
            if two:
                self.directions.shift_(params, [(seed, -2 * eps)])
                minus = self._loss(batch)
                grads.append((plus - minus) / (2 * eps))
                seen += [plus, minus]
                pending = [(seed, eps)]
            else:
                assert base is not None
                grads.append((plus - base) / eps)
                pending = [(seed, -eps)]
        loss = base if base is not None else torch.stack(seen).mean()
        return grads, loss, pending[0][1]

    def _coefficients(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """c_i with G = sum_i c_i z_i: g_i / q, or sign(g_i) / q for variant sign."""
        q = len(grads)
        return [(g.sign() if self.hp.variant == "sign" else g) / q for g in grads]

    def _walk(
        self, active: list[int], seeds: list[int]
    ) -> Iterator[tuple[int, torch.Tensor, list[torch.Tensor]]]:
        params = [self.params[i] for i in active]
        for i, (p, zs) in zip(active, self.directions.walk(params, seeds), strict=True):
            yield i, p, zs

    def _sgd_update(
        self, active: list[int], seeds: list[int], grads: list[torch.Tensor], restore: float
    ) -> None:
        self.opt.step()  # no gradient is set: updates nothing, runs the step-size schedule
        coefs = self._coefficients(grads)
        for i, p, zs in self._walk(active, seeds):
            group = self.opt.param_groups[self.group[i]]
            lr, wd = group["lr"], group["weight_decay"]
            p.add_(zs[-1], alpha=restore)  # back to theta
            if wd:
                p.mul_(1.0 - lr * wd)  # theta - eta lambda theta
            for z, c in zip(zs, coefs, strict=True):
                p.add_(z.mul_(c * -lr))  # - eta c_i z_i
            zs.clear()  # free this tensor's z before the next one is drawn

    def _optimizer_update(
        self, active: list[int], seeds: list[int], grads: list[torch.Tensor], restore: float
    ) -> None:
        coefs = self._coefficients(grads)
        for i, p, zs in self._walk(active, seeds):
            p.add_(zs[-1], alpha=restore)  # back to theta
            grad = zs[0].mul_(coefs[0])
            for z, c in zip(zs[1:], coefs[1:], strict=True):
                grad.add_(z.mul_(c))
            p.grad = grad  # this tensor's G alone
            self.opts[i].step()
            p.grad = None
            del grad
            zs.clear()  # free this tensor's G before the next one is drawn

    def _conservative(
        self,
        params: list[torch.Tensor],
        seeds: list[int],
        grads: list[torch.Tensor],
        restore: float,
        batch: Batch,
        base: torch.Tensor,
    ) -> None:
        self.opt.step()  # no gradient is set: updates nothing, runs the step-size schedule
        lr = self.opt.param_groups[0]["lr"]
        steps = [c * -lr for c in self._coefficients(grads)]  # sum_i steps_i z_i = -eta G
        moves: list[Move] = [(s, c) for s, c in zip(seeds, steps, strict=True)]
        moves[-1] = (seeds[-1], steps[-1] + restore)  # restore theta on the way
        self.directions.shift_(params, moves)  # theta - eta G
        descent = self._loss(batch)
        self.directions.shift_(params, [(s, c * -2) for s, c in zip(seeds, steps, strict=True)])
        ascent = self._loss(batch)  # at theta + eta G
        # ZO-Bench: descent if L- <= L0 and L- < L+; theta if L- > L0 and L0 < L+; else theta+
        keep_descent = (descent <= base) & (descent < ascent)
        keep_theta = (descent > base) & (base < ascent)
        back = torch.where(keep_descent, 2.0, torch.where(keep_theta, 1.0, 0.0))
        self.directions.shift_(params, [(s, c * back) for s, c in zip(seeds, steps, strict=True)])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        return self.head(self.model(x))
