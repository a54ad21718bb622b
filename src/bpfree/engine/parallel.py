"""Starting a parallel run: K processes joined by ``torch.distributed`` (engine/pipeline.py
says what each one does).

Two ways in:

* on one machine, ``run_parallel`` starts the K processes itself (``spawn``; gloo on
  127.0.0.1, a free port), each with ``OMP_NUM_THREADS`` torch threads (default: the cores
  shared out), and watches them: when one ends badly, the others are stopped and the run
  directory keeps its last checkpoint (written by rank 0 after every epoch), so ``--resume``
  continues it;
* under ``torchrun`` (several machines: ``torchrun --nnodes N --nproc-per-node 1
  --rdzv-endpoint HOST:PORT -m bpfree train ... --stages N``), each process joins the group
  from the environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``) and runs its part.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import tempfile
from datetime import timedelta
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bpfree.config import TrainConfig
from bpfree.data import DATASETS, DataBundle
from bpfree.engine.build import phase_plan
from bpfree.engine.interrupt import RunInterrupted
from bpfree.engine.pipeline import Group
from bpfree.engine.result import RunResult
from bpfree.engine.rundir import RunDir
from bpfree.engine.trainer import Trainer
from bpfree.errors import BpfreeError, ConfigError, shorten
from bpfree.models import create_model
from bpfree.rules import create_rule

GRACE_S = 10.0  # how long stopped processes get to leave before they are killed


def world_size(config: TrainConfig) -> int:
    return max(config.stages, config.replicas)


def check_parallel(config: TrainConfig) -> None:
    """What can be checked before any process starts: the rule's pipeline units (on a model
    without memory) and their number against the stages."""
    phase_plan(config)
    if config.stages == 1:
        return
    rule = create_rule(config.rule, config.hparams)
    assert config.model is not None
    spec, meta = DATASETS.get(config.dataset), torch.device("meta")
    with meta:
        model = create_model(config.model, spec.input_shape)
        rule.setup(model, spec.num_classes, meta, torch.Generator())
    units = rule.pipeline_units()
    if len(units) < config.stages:
        raise ConfigError(
            f"{config.model} splits into {len(units)} pipeline units, fewer than "
            f"{config.stages} stages"
        )


def run_config(
    config: TrainConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool | None = None,
    data: DataBundle | None = None,
    evaluate_test: bool = True,
) -> RunResult:
    """One run, in this process or (stages or replicas > 1) over several."""
    if world_size(config) > 1:
        return run_parallel(
            config, out, resume=resume, progress=progress, evaluate_test=evaluate_test
        )
    trainer = Trainer(
        config, out, resume=resume, progress=progress, data=data, evaluate_test=evaluate_test
    )
    return trainer.run()


def train(
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
    config: TrainConfig | None = None,
    **settings: Any,
) -> RunResult:
    """Train one rule on one model and dataset. See :class:`TrainConfig` for the settings
    (``stages`` or ``replicas`` > 1: over that many processes)."""
    if config is None:
        config = TrainConfig.build(settings)
    elif settings:
        config = config.replace(**settings)
    return run_config(config, out, resume=resume, progress=progress)


def run_parallel(
    config: TrainConfig,
    out: str | Path | None,
    *,
    resume: bool = False,
    progress: bool | None = None,
    evaluate_test: bool = True,
) -> RunResult:
    """Train ``config`` over ``world_size(config)`` processes; rank 0's result."""
    world = world_size(config)
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        return _join_torchrun(config, out, resume, progress, world, evaluate_test)
    out = Path(out) if out is not None else None
    rundir = RunDir(out, resume)
    finished = rundir.finished()
    if finished is not None:
        return finished
    rundir.checkpoint(config)  # refuses to clobber another run, and bad checkpoints, now
    check_parallel(config)
    with tempfile.TemporaryDirectory(prefix="bpfree-run-") as tmp:
        where = out if out is not None else Path(tmp)
        _spawn(config, where, resume, progress, world, evaluate_test)
        result = RunDir(where, True).finished()
        if result is None:
            raise BpfreeError(f"the parallel run left no result in {where}")
        return result if out is not None else RunResult.from_dict(result.to_dict())


def _join_torchrun(
    config: TrainConfig,
    out: str | Path | None,
    resume: bool,
    progress: bool | None,
    world: int,
    evaluate_test: bool,
) -> RunResult:
    if int(os.environ["WORLD_SIZE"]) != world:
        raise ConfigError(
            f"torchrun started {os.environ['WORLD_SIZE']} processes; the run needs {world}"
        )
    rank = int(os.environ["RANK"])
    dist.init_process_group(_backend(config), timeout=timedelta(minutes=30))
    try:
        return _run_rank(config, out, rank, world, resume, progress, evaluate_test)
    finally:
        dist.destroy_process_group()


def _run_rank(
    config: TrainConfig,
    out: str | Path | None,
    rank: int,
    world: int,
    resume: bool,
    progress: bool | None,
    evaluate_test: bool,
) -> RunResult:
    """This process's part of the run; rank 0 alone writes the run directory."""
    trainer = Trainer(
        config,
        out if rank == 0 else None,
        resume=resume and rank == 0,  # the others get rank 0's checkpoint
        progress=progress if rank == 0 else False,
        evaluate_test=evaluate_test,
        group=Group(rank, world, config),
    )
    result = trainer.run()
    dist.barrier()  # every process's communication is over before the group goes
    return result


def _backend(config: TrainConfig) -> str:
    if config.device == "cuda":
        if torch.cuda.device_count() < world_size(config):
            raise ConfigError("a parallel run on cuda needs one GPU per process (nccl)")
        return "nccl"
    return "gloo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(
    config: TrainConfig,
    out: Path,
    resume: bool,
    progress: bool | None,
    world: int,
    evaluate_test: bool,
) -> None:
    ctx = mp.get_context("spawn")
    messages = ctx.SimpleQueue()
    threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // world))
    port = _free_port()
    args = (world, port, config.to_dict(), str(out), resume, progress, evaluate_test, threads)
    args = (*args, messages)
    procs = [ctx.Process(target=_worker, args=(rank, *args), daemon=False) for rank in range(world)]
    for p in procs:
        p.start()
    try:
        failed = _watch(procs)
    except KeyboardInterrupt:
        _stop(procs)
        raise RunInterrupted(f"run interrupted; continue it with --resume --out {out}") from None
    if failed is None:
        return
    _stop(procs)
    notes = []
    while not messages.empty():
        notes.append(messages.get())
    errors = [text for _, kind, text in notes if kind == "error"]
    if errors:
        raise ConfigError(errors[0])
    lost = {rank for rank, kind, _ in notes if kind == "lost"}
    rank, code = failed
    if rank in lost:  # it saw another process go: name that one
        gone = [(r, p.exitcode) for r, p in enumerate(procs) if r not in lost and p.exitcode]
        rank, code = next(iter(sorted(gone, key=lambda rc: rc[1])), failed)
    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    raise RunInterrupted(
        f"process {rank} of {world} ended ({how}); the run's last checkpoint is in {out}: "
        f"continue it with --resume --out {out}"
    )


def _watch(procs: list[Any]) -> tuple[int, int] | None:
    """Wait for every process; the first (rank, exit code) that is not 0, or None."""
    running = list(procs)
    while running:
        wait([p.sentinel for p in running])
        for p in list(running):
            if p.exitcode is not None:
                running.remove(p)
                if p.exitcode != 0:
                    return procs.index(p), p.exitcode
    return None


def _stop(procs: list[Any]) -> None:
    for p in procs:
        if p.exitcode is None:
            p.terminate()  # SIGTERM: a run stops as on Ctrl-C, at the next Python instruction
    for p in procs:
        p.join(GRACE_S)
        if p.exitcode is None:  # blocked in a collective whose peer is gone
            p.kill()
            p.join()


def _worker(
    rank: int,
    world: int,
    port: int,
    settings: dict[str, Any],
    out: str,
    resume: bool,
    progress: bool | None,
    evaluate_test: bool,
    threads: int,
    messages: Any,
) -> None:
    """One process of a local parallel run."""
    torch.set_num_threads(threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    config = TrainConfig.build(settings)
    try:
        dist.init_process_group(
            _backend(config), rank=rank, world_size=world, timeout=timedelta(minutes=30)
        )
        _run_rank(config, out, rank, world, resume, progress, evaluate_test)
    except RunInterrupted as exc:
        messages.put((rank, "interrupted", str(exc)))
        raise SystemExit(130) from None
    except BpfreeError as exc:
        messages.put((rank, "error", str(exc)))
        raise SystemExit(2) from None
    except RuntimeError as exc:  # gloo: a peer process is gone (the launcher names it)
        if not any(s in str(exc) for s in ("closed by peer", "reset by peer", "Broken pipe")):
            raise
        messages.put((rank, "lost", shorten(exc)))
        raise SystemExit(1) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
