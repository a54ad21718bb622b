"""The training window of a run split over processes (``torch.distributed``).

Every process runs the same trainer on the same data with the same generators; only the
training window differs, and after it every process holds the whole, identical rule state again
(:meth:`Group.sync`), so evaluation, early stopping, the divergence guard and checkpoints are
the single-process ones (rank 0 evaluates and writes; the others receive its numbers).

* **Pipeline, local rules** (``RuleInfo.pipeline == "local"``; ``stages = K``): the rule's
  units (a layer with its local head) are split into K contiguous stages, balanced by their
  parameter count. Every batch of the epoch streams through the stages: stage 0 makes the
  input (``rule.pipeline_input``: the only draws from the rule's generator), each stage runs
  ``rule.pipeline_step`` on what it receives (its layers update on their own losses at once)
  and sends its detached output on, without waiting for the stages above. Stage s works on
  batch i while stage s+1 works on batch i-1: no bubble after the first batch, no backward
  locking. Each layer sees the output of the layer below from before that layer's update of
  the same batch, as in one process, so the parameters equal the single-process ones.
* **Pipeline, backprop** (``"backprop"``): the stages run by ``torch.distributed.pipelining``
  with the GPipe schedule: every batch is cut into ``micro_batches`` micro-batches, all
  forwards, then all backwards (gradients averaged over the micro-batches: the batch mean),
  then each stage's optimizer step; the bubble is (K-1)/(micro_batches+K-1) of each step.
  ``pipeline_schedule = "1f1b"``: one forward, one backward in turn (the same gradients and
  bubble, fewer micro-batches' activations held at once).
* **Pipeline, update-locked rules** (``"feedback"``, dfa): each stage forwards its layers and
  sends the output on; the last stage computes the output error, sends it (B x C) to every
  stage and then updates its own layers; each stage applies it ``rule.pipeline_lag`` batches
  later: 0 waits (the single-process algorithm; the stages overlap only in their updates), more
  lets a stage forward the next batches first (its forward weights that many updates behind).
  Stated in the record's ``schedule``.
* **Data parallel** (``replicas = K``): every process takes its shard of every batch, and an
  optimizer step pre-hook averages the gradients over the processes (``all_reduce``, what DDP
  does, without its overlap of communication and backward) before every step.

Per process and epoch the trainer's record gets the stage's wall time, the CPU time of its
main thread (``time.thread_time``: busy = CPU time / wall; waiting in a receive costs none),
the time spent waiting for input, the bytes it sent and its peak resident memory
(``getrusage``: the process's high-water mark, data included).
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from bpfree.config import TrainConfig
from bpfree.data import DataBundle
from bpfree.engine.loop import EpochStats, evaluate
from bpfree.engine.stages import (
    Pending,
    StageModule,
    StageTimes,
    receive,
    send,
    split_units,
    unit_tensors,
)
from bpfree.errors import ConfigError
from bpfree.rules import Batch, Rule

__all__ = ["Group", "split_units", "unit_tensors"]


class Group:
    """This process's place in a parallel run, and the parallel training window."""

    def __init__(self, rank: int, world: int, config: TrainConfig) -> None:
        self.rank, self.world, self.config = rank, world, config
        self.mode = "pipeline" if config.stages > 1 else "data"
        self.times = StageTimes()
        self._schedules: dict[int, Any] = {}
        self._described: dict[int, str] = {}  # backprop: the schedule of each batch size
        self.lags: list[int] = []  # feedback: rule.pipeline_lag of each stage
        self._hooked: set[int] = set()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def ready(self) -> None:
        """Wait until every process is here (before a timed window: the pipeline's clock starts
        when all its stages can work)."""
        dist.barrier()

    def share(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process."""
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    # ---- set up -----------------------------------------------------------------------------
    def setup(self, rule: Rule) -> None:
        """Split the rule into stages (pipeline) and check that the split covers it."""
        self.kind = rule.info.pipeline if self.mode == "pipeline" else "data"
        if self.mode != "pipeline":
            return
        self.units = rule.pipeline_units()
        if self.kind == "feedback":  # batches each stage forwards before a batch's error lands
            self.lags = [rule.pipeline_lag(stage, self.world) for stage in range(self.world)]
        self.tensors = [unit_tensors(u) for u in self.units]
        covered = {id(t) for ts in self.tensors for t in ts}
        every = [*rule.modules.parameters(), *rule.modules.buffers()]
        missing = [t for t in every if id(t) not in covered]
        if missing:
            raise ConfigError(f"rule {rule.info.name!r}: its pipeline units leave tensors out")
        costs = [sum(t.numel() for t in ts) for ts in self.tensors]
        self.spans = split_units(costs, self.world)
        self.span = self.spans[self.rank]
        self.owner = [s for s, span in enumerate(self.spans) for _ in span]

    # ---- the training window ----------------------------------------------------------------
    def train_epoch(
        self,
        rule: Rule,
        data: DataBundle,
        batches: torch.Generator,
        batch_size: int,
        device: torch.device,
        max_steps: int | None = None,
        seconds: float | None = None,
    ) -> EpochStats:
        """One pass over the training set, split over the processes; then the whole state is
        made identical everywhere. The same permutation is drawn on every process."""
        assert seconds is None  # refused by TrainConfig: processes must stop at the same step
        self.times = StageTimes()
        wall, cpu, pcpu = time.perf_counter(), time.thread_time(), time.process_time()
        n = data.train_x.shape[0]
        perm = torch.randperm(n, generator=batches).to(device)  # (n,)
        stats = EpochStats(torch.zeros((), device=device), None, 0, 0)
        steps = {"local": self._local_step, "backprop": self._backprop_step}
        step = {**steps, "feedback": self._feedback_step}.get(self.kind, self._replica_step)
        pending: Pending = []
        self._late: list[list[torch.Tensor]] = []  # feedback: batches waiting for their error
        for start in range(0, n, batch_size):
            if max_steps is not None and stats.steps >= max_steps:
                break
            idx = perm[start : start + batch_size]  # (b,)
            loss = step(rule, Batch(data.train_x[idx], data.train_y[idx], idx), pending)
            if stats.first_loss is None:
                stats.first_loss = loss
            stats.loss_sum += loss
            stats.steps += 1
            stats.samples += int(idx.shape[0])
        while self._late:  # every batch's update lands in its epoch
            self._apply_error(rule, device)
        for work, _ in pending:
            work.wait()
        begin = time.perf_counter()
        self._reduce_losses(stats)
        self.sync(rule)
        self.times.sync_s = time.perf_counter() - begin
        self.times.wall_s = time.perf_counter() - wall
        self.times.cpu_s = time.thread_time() - cpu
        self.times.process_cpu_s = time.process_time() - pcpu
        return stats

    def _stage_input(self, rule: Rule, batch: Batch) -> torch.Tensor:
        """The first stage's input from the batch; every other's from the stage before it."""
        if self.rank == 0:
            return rule.pipeline_input(batch)
        return receive(self.rank - 1, batch.x.device, self.times)

    def _local_step(self, rule: Rule, batch: Batch, pending: Pending) -> torch.Tensor:
        h = self._stage_input(rule, batch)
        begin = time.perf_counter()
        out, loss = rule.pipeline_step(self.span.start, self.span.stop, h, batch)
        self.times.compute_s += time.perf_counter() - begin
        if self.rank < self.world - 1:
            send(out, self.rank + 1, pending, self.times)
        return loss

    def _feedback_step(self, rule: Rule, batch: Batch, pending: Pending) -> torch.Tensor:
        """Update-locked (dfa): forward this stage's layers, send the output on; the last stage
        sends the batch's error to every stage, which applies it ``pipeline_lag`` batches later
        (0: before it forwards the next batch)."""
        device, last = batch.x.device, self.world - 1
        h = self._stage_input(rule, batch)
        begin = time.perf_counter()
        out, saved = rule.pipeline_forward_span(self.span.start, self.span.stop, h)
        if self.rank == last:  # the error goes out first: the stages update at the same time
            e, loss = rule.pipeline_top(self.span.start, saved, batch)
            self.times.compute_s += time.perf_counter() - begin
            for stage in range(last):
                send(e, stage, pending, self.times)
            begin = time.perf_counter()
            rule.pipeline_update(self.span.start, saved, e, top=True)
            self.times.compute_s += time.perf_counter() - begin
            return loss
        self.times.compute_s += time.perf_counter() - begin
        send(out, self.rank + 1, pending, self.times)
        self._late.append(saved)
        while len(self._late) > self.lags[self.rank]:
            self._apply_error(rule, device)
        return torch.zeros((), device=device)

    def _apply_error(self, rule: Rule, device: torch.device) -> None:
        """The oldest waiting batch's error, from the last stage, applied to this stage."""
        e = receive(self.world - 1, device, self.times)
        begin = time.perf_counter()
        rule.pipeline_update(self.span.start, self._late.pop(0), e)
        self.times.compute_s += time.perf_counter() - begin

    def _backprop_step(self, rule: Rule, batch: Batch, pending: Pending) -> torch.Tensor:
        rows = int(batch.y.shape[0])
        schedule = self._schedule(rule, rows, batch.x.device)
        optimizers = list(rule.optimizers().values())
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        losses: list[torch.Tensor] = []
        if self.rank == 0:
            schedule.step(batch.x)
        elif self.rank == self.world - 1:
            schedule.step(target=batch.y, losses=losses)
        else:
            schedule.step()
        self.times.wait_s = None  # spent inside torch's schedule: not observable here
        for opt in optimizers:
            opt.step()  # a stage's parameters are the only ones with gradients here
        assert rule.model is not None
        dims = rule.model.block_dims
        up = dims[self.span.stop - 1] if self.rank < self.world - 1 else 0  # activations
        down = dims[self.span.start - 1] if self.rank > 0 else 0  # their gradients
        self.times.bytes_sent += rows * (up + down) * 4  # float32, from the boundary shapes
        if not losses:
            return torch.zeros((), device=batch.y.device)
        return torch.stack([loss.detach() for loss in losses]).mean()

    def _schedule(self, rule: Rule, rows: int, device: torch.device) -> Any:
        """This stage's schedule for batches of ``rows`` (one per batch size)."""
        if rows not in self._schedules:
            from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

            module = StageModule(rule, self.units, self.span)
            stage = PipelineStage(module, self.rank, self.world, device)
            # equal micro-batches (their mean loss is the batch's): the largest count up to the
            # setting that divides the batch
            micro = max(d for d in range(1, self.config.micro_batches + 1) if rows % d == 0)
            # 1F1B needs a micro-batch per stage; a batch that cannot give that runs GPipe (the
            # same gradients in another order), and the record says so
            kind = Schedule1F1B if self.config.pipeline_schedule == "1f1b" else ScheduleGPipe
            kind = kind if micro >= self.world else ScheduleGPipe
            self._schedules[rows] = kind(stage, micro, loss_fn=F.cross_entropy)
            name = "1F1B" if kind is Schedule1F1B else "GPipe"
            self._described[rows] = f"batch {rows}: {name}, {micro} micro-batches"
        return self._schedules[rows]

    def _replica_step(self, rule: Rule, batch: Batch, pending: Pending) -> torch.Tensor:
        """This replica's shard of the batch (the whole batch, on every replica, when it has
        fewer examples than replicas); gradients are averaged before every optimizer step."""
        for opt in rule.optimizers().values():
            if id(opt) not in self._hooked:
                opt.register_step_pre_hook(self._average_gradients)
                self._hooked.add(id(opt))
        rows = torch.arange(batch.y.shape[0], device=batch.y.device)
        shards = rows.tensor_split(self.world)
        mine = shards[self.rank] if all(len(s) for s in shards) else rows
        return rule.train_step(Batch(batch.x[mine], batch.y[mine], batch.index[mine]))

    def _average_gradients(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        begin = time.perf_counter()
        dist.all_reduce(flat)
        assert self.times.wait_s is not None
        self.times.wait_s += time.perf_counter() - begin
        self.times.bytes_sent += flat.numel() * flat.element_size()
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def _reduce_losses(self, stats: EpochStats) -> None:
        """Every process's share of the reported losses, summed (pipeline: each stage's layers;
        data parallel: each replica's shard, averaged)."""
        first = stats.first_loss if stats.first_loss is not None else stats.loss_sum * 0
        both = torch.stack([stats.loss_sum, first]).float().cpu()
        dist.all_reduce(both)
        if self.mode == "data":
            both /= self.world
        stats.loss_sum = both[0].to(stats.loss_sum.device)
        if stats.first_loss is not None:
            stats.first_loss = both[1].to(stats.loss_sum.device)

    # ---- one state everywhere ---------------------------------------------------------------
    def sync(self, rule: Rule) -> None:
        """Make every process hold the same rule state: each unit's tensors and optimizer state
        from the stage that trained it (data parallel: everything from rank 0), and rank 0's
        rule generator (the only process that draws from it in a local pipeline)."""
        if self.mode == "pipeline":
            for unit, tensors in enumerate(self.tensors):
                src = self.owner[unit]
                for t in tensors:
                    dist.broadcast(t.data, src=src)
                self._sync_optimizer_state(rule, tensors, src)
        else:
            for t in [*rule.modules.parameters(), *rule.modules.buffers()]:
                dist.broadcast(t.data, src=0)
        gen = rule.generator
        assert gen is not None
        state = gen.get_state()
        dist.broadcast(state, src=0)
        gen.set_state(state)

    def _sync_optimizer_state(self, rule: Rule, tensors: list[torch.Tensor], src: int) -> None:
        """The optimizer state of ``tensors`` from ``src``: its layout as one small object, then
        each state tensor broadcast as it is (no pickling of large tensors)."""
        ids = {id(t) for t in tensors}
        params = [
            (opt, p)
            for _, opt in sorted(rule.optimizers().items())
            for group in opt.param_groups
            for p in group["params"]
            if id(p) in ids
        ]
        layout = None
        if self.rank == src:
            layout = [
                {
                    key: (tuple(v.shape), v.dtype, str(v.device))
                    if isinstance(v, torch.Tensor)
                    else ("value", v)
                    for key, v in opt.state.get(p, {}).items()
                }
                for opt, p in params
            ]
        box = [layout]
        dist.broadcast_object_list(box, src=src)
        for (opt, p), entries in zip(params, box[0], strict=True):
            state = opt.state[p] if self.rank == src else {}
            for key, (shape, dtype, where) in sorted(entries.items()):
                if shape == "value":
                    state[key] = dtype
                    continue
                if self.rank != src:
                    state[key] = torch.empty(shape, dtype=dtype, device=where)
                dist.broadcast(state[key], src=src)
            if self.rank != src and entries:
                opt.state[p] = state

    def record(self) -> dict[str, Any]:
        """Every process's figures for the last window (collective: every process calls it)."""
        box: list[Any] = [None] * self.world
        dist.all_gather_object(box, self.times.record())
        return {"parallel": self.mode, "schedule": self.schedule, "processes": box}

    @property
    def schedule(self) -> str:
        """The schedule this process ran, in words (the record states it)."""
        if self.mode == "data":
            return "data parallel: gradients averaged over the replicas before every step"
        if self.kind == "backprop":
            return "; ".join(self._described[r] for r in sorted(self._described))
        if self.kind == "feedback":
            return (
                "update-locked: stage s applies a batch's error after forwarding lags[s] more "
                f"batches, lags {self.lags}"
            )
        return "local: each stage updates as soon as its batch arrives"

    # ---- evaluation ---------------------------------------------------------------------------
    def evaluate(
        self, rule: Rule, x: torch.Tensor, y: torch.Tensor, batch_size: int
    ) -> tuple[float, float]:
        """Rank 0 evaluates (the state is the same everywhere); every process gets its numbers."""
        result = evaluate(rule, x, y, batch_size) if self.main else None
        return self.share(result)
