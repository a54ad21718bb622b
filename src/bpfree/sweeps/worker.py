"""Work on a study until it holds exactly ``n_trials`` finished trials.

How a fixed budget survives many workers (any number, on any machines, joining at any time):

* At creation the study gets ``n_trials`` *tickets*: WAITING trials, each with a ``slot``
  number. A worker claims a ticket by switching it WAITING -> RUNNING, which the storage does
  atomically; a worker never creates a trial of its own, so the study cannot overshoot.
* A ticket whose trial fails is replaced by one for the same slot, written by the one process
  that moved it to FAIL: its own worker (a diverged or crashed run: fresh settings; Ctrl-C: same
  settings) or, for a worker that died, whichever worker noticed its missing heartbeats (same
  settings, up to ``max_retry`` times).
* A claimed ticket whose slot is already live elsewhere (possible only after a repair, below,
  raced) is failed at once as a duplicate, before it samples anything.
* If the study is stuck (no WAITING, no RUNNING, fewer than ``n_trials`` finished) because a
  process died between two writes, a worker re-issues the missing slots.

Optuna's own ``study.optimize`` is not used because its stopping rules (``n_trials``,
``MaxTrialsCallback``) are per process or checked after the fact, and overshoot by up to one
trial per extra worker. Everything stays readable by standard Optuna tools.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bpfree.config import TrainConfig
from bpfree.engine.trainer import RunInterrupted
from bpfree.errors import ConfigError
from bpfree.sweeps.budget import Budget
from bpfree.sweeps.objective import (
    COMPLETE,
    DUPLICATE,
    FAIL,
    PRUNED,
    DataCache,
    TrialOutcome,
    run_trial,
)
from bpfree.sweeps.report import record_totals
from bpfree.sweeps.storage import open_storage
from bpfree.sweeps.study import SweepError, SweepSpec, create_or_join, quiet_optuna, worker_id


def claim_ticket(optuna: Any, storage: Any, trial_id: int) -> bool:
    """Switch a WAITING ticket to RUNNING, atomically; False if another worker won.

    One conditional ``UPDATE ... WHERE state = 'WAITING'`` decides: Optuna's own
    ``set_trial_state_values`` reads the state and then writes it, which PostgreSQL serializes
    (``SELECT ... FOR UPDATE``) but SQLite does not, so on the default storage two workers
    could both "claim" one ticket.

    The heartbeat is recorded *before* the switch: Optuna never fails a RUNNING trial that has
    no heartbeat at all, so a worker that died between claiming and its first beat would leave
    the trial RUNNING forever. Beating a WAITING trial is harmless (staleness is only checked
    for RUNNING ones), and a claim that loses the race has only refreshed the winner's beat.
    """
    import sqlalchemy
    from optuna.storages._rdb import models

    TrialState = optuna.trial.TrialState
    storage.record_heartbeat(trial_id)
    claim = (
        sqlalchemy.update(models.TrialModel)
        .where(models.TrialModel.trial_id == trial_id)
        .where(models.TrialModel.state == TrialState.WAITING)
        .values(state=TrialState.RUNNING, datetime_start=datetime.now())
    )
    with storage.engine.begin() as connection:
        claimed = connection.execute(claim).rowcount == 1
    if claimed:
        storage.record_heartbeat(trial_id)  # fresh from the moment it runs
    return claimed


class Heartbeat:
    """Records the running trial's heartbeat from a thread, as ``study.optimize`` would."""

    def __init__(self, storage: Any, trial_id: int, interval_s: int) -> None:
        self.storage, self.trial_id, self.interval_s = storage, trial_id, interval_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="bpfree-heartbeat")

    def _beat(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a lost connection: the next beat retries
                self.storage.record_heartbeat(self.trial_id)
            if self.stop.wait(self.interval_s):
                return

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


@dataclass
class WorkReport:
    """What one worker did."""

    trials: list[Any] = field(default_factory=list)  # FrozenTrials this worker finished
    status: str = "complete"  # complete | gave_up | stopped (max_trials) | busy (wait=False)


def _counts(trials: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def _failures(trials: list[Any]) -> int:
    return sum(
        1 for t in trials if t.state.name == FAIL and t.user_attrs.get("reason") != DUPLICATE
    )


class Worker:
    """Claims tickets of one study and runs them until the study is finished."""

    def __init__(
        self,
        spec: SweepSpec,
        *,
        progress: bool = False,
        on_trial: Callable[[Any], None] | None = None,
        data: DataCache | None = None,
    ) -> None:
        """``data``: a cache to share with other workers of this process (one dataset load)."""
        self.optuna = quiet_optuna()
        self.data = data if data is not None else DataCache()
        self.spec, self.budget = spec, spec.budget
        self.progress, self.on_trial = progress, on_trial
        self.storage = open_storage(
            spec.storage,
            heartbeat_interval_s=self.budget.heartbeat_interval_s,
            grace_period_s=self.budget.grace_period_s,
            stale_trial_callback=self._stale,
        )
        self.study = self.optuna.load_study(
            study_name=spec.name, storage=self.storage, pruner=self.budget.make_pruner()
        )
        self.poll_s = min(2.0, self.budget.heartbeat_interval_s)

    # ---- tickets --------------------------------------------------------------------------
    def _enqueue(self, slot: int, params: dict[str, Any], **attrs: Any) -> None:
        self.study.enqueue_trial(params, user_attrs={"slot": slot, **attrs})

    def _requeue(self, failed: Any, same_settings: bool, why: str) -> None:
        slot = failed.user_attrs.get("slot")
        if slot is None:
            return
        if _failures(self.study.get_trials(deepcopy=False)) > self.budget.failure_cap:
            return  # the study gives up; see work()
        retries = failed.user_attrs.get("retries", 0)
        if same_settings and failed.params and retries < self.budget.max_retry:
            self._enqueue(
                slot,
                dict(failed.params),
                retry_of=failed.number,
                retries=retries + 1,
                retry_reason=why,
            )
        else:
            self._enqueue(slot, {}, replaces=failed.number, retry_reason=why)

    def _stale(self, study: Any, trial: Any) -> None:
        """Called once per trial whose worker stopped sending heartbeats (now FAIL)."""
        self._requeue(trial, True, f"trial {trial.number}: its worker stopped sending heartbeats")

    def _claim(self) -> Any | None:
        TrialState = self.optuna.trial.TrialState
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        for ticket in sorted(waiting, key=lambda t: t.number):
            if not claim_ticket(self.optuna, self.storage, ticket._trial_id):
                continue  # another worker claimed it first
            slot = ticket.user_attrs.get("slot")
            live = self.study.get_trials(
                deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
            )
            if any(t.number != ticket.number and t.user_attrs.get("slot") == slot for t in live):
                self.storage.set_trial_user_attr(ticket._trial_id, "reason", DUPLICATE)
                self.storage.set_trial_state_values(ticket._trial_id, TrialState.FAIL)
                continue
            self.study.sampler = self.budget.sampler(ticket.number)
            return self.optuna.trial.Trial(self.study, ticket._trial_id)
        return None

    def _repair(self, trials: list[Any]) -> None:
        """Re-issue slots that have no ticket left (a process died between two writes)."""
        covered = {
            t.user_attrs.get("slot")
            for t in trials
            if t.state.name in ("WAITING", "RUNNING", COMPLETE, PRUNED)
        }
        for slot in range(self.budget.n_trials):
            if slot not in covered:
                self._enqueue(slot, {}, repaired=True)

    # ---- one trial ------------------------------------------------------------------------
    def _run(self, trial: Any, data: DataCache) -> TrialOutcome:
        TrialState = self.optuna.trial.TrialState
        trial.set_user_attr("worker", worker_id())
        with Heartbeat(self.storage, trial._trial_id, self.budget.heartbeat_interval_s):
            outcome = run_trial(trial, self.spec.base, data, progress=self.progress)
        try:
            trial.set_user_attr("cost", outcome.cost)
            trial.set_user_attr("epochs", outcome.epochs)
            if outcome.reason:
                trial.set_user_attr("reason", outcome.reason)
            if outcome.state == COMPLETE:
                self.study.tell(trial, outcome.value)
            else:
                self.study.tell(trial, state=getattr(TrialState, outcome.state))
        except self.optuna.exceptions.UpdateFinishedTrialError:
            # Marked FAIL by another worker after a heartbeat gap; it has re-queued the slot.
            outcome.reason = "lost: failed by another worker after missing heartbeats"
            return outcome
        if outcome.state == FAIL:
            frozen = self.study.get_trials(deepcopy=False)[trial.number]
            interrupted = isinstance(outcome.error, RunInterrupted)
            self._requeue(frozen, interrupted, outcome.reason)
        return outcome

    # ---- the loop -------------------------------------------------------------------------
    def work(self, max_trials: int | None = None, *, wait: bool = True) -> WorkReport:
        """Run trials until the study holds ``n_trials`` finished ones (or ``max_trials`` here).

        ``wait=False``: return (status ``busy``) instead of waiting while other workers run the
        last trials, so a process can work on another study meanwhile.
        """
        if max_trials is not None and max_trials < 0:
            raise ConfigError(
                f"max_trials must be >= 0 (0: only create the study), got {max_trials}"
            )
        optuna = self.optuna
        report = WorkReport()
        data, loaded = self.data, False
        n = self.budget.n_trials
        while True:
            optuna.storages.fail_stale_trials(self.study)
            trials = self.study.get_trials(deepcopy=False)
            counts = _counts(trials)
            if counts.get(COMPLETE, 0) + counts.get(PRUNED, 0) >= n:
                break
            if _failures(trials) > self.budget.failure_cap:
                report.status = "gave_up"
                break
            if max_trials is not None and len(report.trials) >= max_trials:
                report.status = "stopped"
                break
            if not loaded:  # once, before claiming: a missing dataset claims nothing
                data.get(self.spec.base)
                loaded = True
            trial = self._claim()
            if trial is None:
                if not counts.get("WAITING") and not counts.get("RUNNING"):
                    self._repair(trials)
                elif not wait:
                    report.status = "busy"
                    return report
                else:
                    time.sleep(self.poll_s)  # others are running the last trials
                continue
            outcome = self._run(trial, data)
            frozen = self.study.get_trials(deepcopy=False)[trial.number]
            report.trials.append(frozen)
            if self.on_trial is not None:
                self.on_trial(frozen)
            if outcome.error is not None:
                raise outcome.error
        record_totals(self.study)
        if report.status == "gave_up":
            raise SweepError(
                f"study {self.spec.name!r} gave up: more than {self.budget.failure_cap} failed "
                "trials (see their 'reason'); fix the cause and start a new study"
            )
        return report


def work(
    study: str,
    storage: str | None = None,
    *,
    data_dir: str | None = None,
    max_trials: int | None = None,
    progress: bool = False,
    on_trial: Callable[[Any], None] | None = None,
) -> WorkReport:
    """Join study ``study`` and run its trials until it is finished (``bpfree worker``)."""
    spec = create_or_join(study, storage, base={"data_dir": data_dir} if data_dir else None)
    return Worker(spec, progress=progress, on_trial=on_trial).work(max_trials)


def run_study(
    base: TrainConfig,
    budget: Budget,
    *,
    study: str,
    storage: str | None = None,
    progress: bool = False,
    on_trial: Callable[[Any], None] | None = None,
) -> SweepSpec:
    """Create (or join) a study and work on it until it has exactly ``budget.n_trials``
    finished trials; the building block ``bpfree compare`` tunes each rule with."""
    spec = create_or_join(study, storage, base=base, budget=budget)
    Worker(spec, progress=progress, on_trial=on_trial).work()
    return spec
