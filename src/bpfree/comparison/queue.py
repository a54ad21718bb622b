"""The seeded runs of a comparison, shared by several processes through one storage.

``bpfree compare --storage URL`` puts the comparison's seeded runs into one more Optuna study,
``cmp-<digest>-runs``, in the same storage as its tuning studies (see :mod:`bpfree.sweeps`):

* At creation the study gets one *ticket* per planned run: a WAITING trial whose user
  attribute ``key`` names the run (its directory under ``<out>/runs``). The study also stores
  every run's settings; a process whose plan differs (another bpfree, other tuned settings) is
  refused.
* A process claims a ticket by switching it WAITING -> RUNNING, atomically in the storage, as a
  sweep worker does; it records heartbeats while it trains the run in its own ``<out>``.
* When the run is finished the process stores its ``result.json``, per-epoch metrics and
  environment in the trial's user attributes (``result``, ``history``, ``env``) and marks it
  COMPLETE (value: test accuracy, ``-inf`` when there is none). Every process writes the runs
  done elsewhere into its own ``<out>/runs/<key>/`` from the storage, so each ``<out>`` holds
  the whole comparison (weights, ``model.pt``, stay on the machine that trained them).
* A process that is killed stops its heartbeats; after the grace period another process marks
  the ticket FAIL and queues a new one for the same run. Checkpoints are local: on the same
  machine and ``<out>`` the run resumes from its last epoch, elsewhere it restarts from scratch.
  Ctrl-C (or SIGTERM) fails and re-queues the ticket at once.
* A run that crashes is FAIL with its reason; every process stops with that reason, and
  rerunning the command queues the run again.
* A claimed ticket whose run is already done, or claimed under a lower-numbered ticket, is
  failed as a duplicate before it trains anything, so no run is trained twice.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bpfree.comparison.plan import PlannedRun
from bpfree.engine import RunInterrupted, RunResult
from bpfree.engine.io import RESULT_FIELDS, read_json, write_json, write_text
from bpfree.errors import ConfigError
from bpfree.signals import raise_if_terminated
from bpfree.sweeps.objective import DUPLICATE
from bpfree.sweeps.storage import open_storage, redact
from bpfree.sweeps.study import find_study, quiet_optuna, wait_ready, worker_id
from bpfree.sweeps.worker import Heartbeat, claim_ticket
from bpfree.version import __version__

SCHEMA = 1
KIND = "compare-runs"
LOCAL_ONLY = ("data_dir",)
RUN_FILES = ("result.json", "metrics.jsonl", "env.json", "config.json")


def shared_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's settings without those that only say where things are on one machine."""
    return {k: v for k, v in config.items() if k not in LOCAL_ONLY}


class RunQueue:
    """Claims the comparison's seeded runs from a shared storage until all are done."""

    def __init__(
        self,
        name: str,
        storage: str,
        plan: list[PlannedRun],
        out: Path,
        *,
        heartbeat_interval_s: int = 15,
        grace_period_s: int = 60,
        log: Callable[[str], None] = print,
    ) -> None:
        self.optuna = quiet_optuna()
        self.name, self.url, self.plan, self.out, self.log = name, storage, plan, out, log
        self.by_key = {r.key: r for r in plan}
        self.index = {r.key: i for i, r in enumerate(plan, 1)}
        self._hb = (heartbeat_interval_s, grace_period_s)  # used if this process creates it
        attrs = self._create_or_join()
        hb = attrs["heartbeat"]  # the creator's settings, for every process
        self.heartbeat_interval_s = hb["interval_s"]
        self.storage = open_storage(
            storage,
            heartbeat_interval_s=hb["interval_s"],
            grace_period_s=hb["grace_period_s"],
            stale_trial_callback=self._stale,
        )
        self.study = self.optuna.load_study(study_name=name, storage=self.storage)
        self.poll_s = min(2.0, hb["interval_s"])
        self.written: set[str] = set()
        self.rows: set[str] | None = None  # the labels this process trains (None: all)

    # ---- the study ------------------------------------------------------------------------
    def _create_or_join(self) -> dict[str, Any]:
        optuna, raw = self.optuna, open_storage(self.url)
        configs = {r.key: shared_config(r.config.to_dict()) for r in self.plan}
        existing = find_study(optuna, self.name, raw)
        if existing is None:
            try:
                created = optuna.create_study(
                    study_name=self.name, storage=raw, direction="maximize"
                )
            except optuna.exceptions.DuplicatedStudyError:
                existing = find_study(optuna, self.name, raw)  # another process, just now
            else:
                interval, grace = self._hb
                attrs = {
                    "bpfree": {
                        "version": __version__,
                        "schema": SCHEMA,
                        "kind": KIND,
                        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "created_by": worker_id(),
                    },
                    "runs": configs,
                    "heartbeat": {"interval_s": interval, "grace_period_s": grace},
                    "objective": "test accuracy of the finished run (-inf when none)",
                }
                for key, value in attrs.items():
                    created.set_user_attr(key, value)
                for slot, run in enumerate(self.plan):
                    created.enqueue_trial({}, user_attrs={"key": run.key, "slot": slot})
                created.set_user_attr("ready", True)  # last: joiners wait for it
                return attrs
        assert existing is not None
        attrs = wait_ready(existing, self.name)
        if attrs.get("bpfree", {}).get("kind") != KIND:
            raise ConfigError(f"study {self.name!r} in {redact(self.url)} is not a comparison")
        stored = attrs["runs"]
        diff = sorted(k for k in set(stored) | set(configs) if stored.get(k) != configs.get(k))
        if diff:
            raise ConfigError(
                f"the comparison in {redact(self.url)} (study {self.name!r}) plans other runs: "
                f"{', '.join(diff[:4])}{' ...' if len(diff) > 4 else ''} differ; run the same "
                "bpfree version with the same options everywhere"
            )
        return attrs

    def _enqueue(self, study: Any, key: str, **attrs: Any) -> None:
        slot = next(i for i, r in enumerate(self.plan) if r.key == key)
        study.enqueue_trial({}, user_attrs={"key": key, "slot": slot, **attrs})

    def _stale(self, study: Any, trial: Any) -> None:
        """Called once per ticket whose process stopped sending heartbeats (now FAIL)."""
        key = trial.user_attrs.get("key")
        if key in self.by_key:
            why = f"ticket {trial.number}: its process stopped sending heartbeats"
            self._enqueue(study, key, retry_of=trial.number, retry_reason=why)

    def _repair(self, trials: list[Any], retry_errors: bool) -> None:
        """Queue runs that have no ticket left: a process died between two writes, or (on a
        rerun, ``retry_errors``) the run crashed before."""
        for key in self.by_key:
            mine = [t for t in trials if t.user_attrs.get("key") == key]
            if any(t.state.name in ("WAITING", "RUNNING", "COMPLETE") for t in mine):
                continue
            errors = [t for t in mine if t.state.name == "FAIL" and t.user_attrs.get("error")]
            if errors and not retry_errors:
                last = errors[-1].user_attrs
                raise ConfigError(
                    f"run {key} failed on {last.get('worker', '?')}: {last.get('reason')}; fix "
                    "the cause and rerun the command (it queues failed runs again)"
                )
            self._enqueue(self.study, key, repaired=True)

    def _claim(self) -> Any | None:
        TrialState = self.optuna.trial.TrialState
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        for ticket in sorted(waiting, key=lambda t: t.number):
            run = self.by_key.get(ticket.user_attrs.get("key"))
            if run is None or (self.rows is not None and run.label not in self.rows):
                continue
            if not claim_ticket(self.optuna, self.storage, ticket._trial_id):
                continue
            key = ticket.user_attrs["key"]
            live = self.study.get_trials(
                deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE)
            )
            if any(
                t.user_attrs.get("key") == key
                and t.number != ticket.number
                and (t.state == TrialState.COMPLETE or t.number < ticket.number)
                for t in live
            ):
                self.storage.set_trial_user_attr(ticket._trial_id, "reason", DUPLICATE)
                self.storage.set_trial_state_values(ticket._trial_id, TrialState.FAIL)
                continue
            return ticket
        return None

    # ---- one run --------------------------------------------------------------------------
    def _run(self, ticket: Any, train: Callable[[PlannedRun], RunResult]) -> RunResult | None:
        TrialState = self.optuna.trial.TrialState
        tid, storage = ticket._trial_id, self.storage
        run = self.by_key[ticket.user_attrs["key"]]
        storage.set_trial_user_attr(tid, "worker", worker_id())
        self.log(
            f"[{self.index[run.key]}/{len(self.plan)}] {run.label} on {run.config.model}, "
            f"seed {run.config.seed}: training (ticket {ticket.number})"
        )
        try:
            with Heartbeat(storage, tid, self.heartbeat_interval_s):
                result = train(run)
        except (RunInterrupted, KeyboardInterrupt) as exc:
            with contextlib.suppress(Exception):  # already failed elsewhere: it was re-queued
                storage.set_trial_user_attr(tid, "reason", f"interrupted: {exc}")
                if storage.set_trial_state_values(tid, TrialState.FAIL):
                    why = "Ctrl-C or SIGTERM"
                    self._enqueue(self.study, run.key, retry_of=ticket.number, retry_reason=why)
            raise
        except BaseException as exc:
            with contextlib.suppress(Exception):
                storage.set_trial_user_attr(tid, "reason", f"{type(exc).__name__}: {exc}")
                storage.set_trial_user_attr(tid, "error", True)
                storage.set_trial_state_values(tid, TrialState.FAIL)
            raise
        run_dir = self.out / "runs" / run.key
        payload = {
            "result": result.to_dict(),
            "history": _history(run_dir / "metrics.jsonl"),
            "env": read_json(run_dir / "env.json", {}) if (run_dir / "env.json").exists() else {},
        }
        acc = result.metrics.get("test_accuracy")
        value = float(acc) if acc is not None else float("-inf")
        try:
            for key, data in payload.items():
                storage.set_trial_user_attr(tid, key, data)
            storage.set_trial_state_values(tid, TrialState.COMPLETE, [value])
        except self.optuna.exceptions.UpdateFinishedTrialError:
            self.log(f"        lost: {run.key} was failed by another process (missed heartbeats)")
            return None
        self.written.add(run.key)
        self.log(f"        {result.status}" + (f", test accuracy {100 * acc:.2f}%" if acc else ""))
        return result

    # ---- runs done elsewhere --------------------------------------------------------------
    def _write_local(self, key: str, attrs: dict[str, Any]) -> None:
        """Write a run finished by another process into ``<out>/runs/<key>`` (once)."""
        if key in self.written:
            return
        run_dir = self.out / "runs" / key
        stored = attrs["result"]
        local = run_dir / "result.json"
        same = local.exists() and not (run_dir / "checkpoint.pt").exists()
        if not (same and read_json(local) == stored):
            history = attrs.get("history", [])
            write_json(run_dir / "config.json", stored["config"])
            write_json(run_dir / "env.json", attrs.get("env", {}))
            write_text(run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
            (run_dir / "model.pt").unlink(missing_ok=True)  # not these weights
            write_json(local, stored)
            (run_dir / "checkpoint.pt").unlink(missing_ok=True)
            run = self.by_key[key]
            self.log(
                f"[{self.index[key]}/{len(self.plan)}] {run.label} on {run.config.model}, seed "
                f"{run.config.seed}: done by {attrs.get('worker', '?')}"
            )
        self.written.add(key)

    # ---- the loop -------------------------------------------------------------------------
    def work(
        self, train: Callable[[PlannedRun], RunResult], rows: set[str] | None = None
    ) -> dict[str, RunResult]:
        """Claim and train runs until every planned run is done (here or elsewhere); with
        ``rows``, only the runs of those labels (the others are left to other processes)."""
        self.rows = rows
        targets = [k for k, r in self.by_key.items() if rows is None or r.label in rows]
        first = True
        while True:
            raise_if_terminated()  # a SIGTERM whose own interrupt was dropped: claim no more
            self.optuna.storages.fail_stale_trials(self.study)
            trials = self.study.get_trials(deepcopy=False)
            done = {t.user_attrs["key"]: t for t in trials if t.state.name == "COMPLETE"}
            for key, t in done.items():
                if key in self.by_key:
                    self._write_local(key, t.user_attrs)
            if all(key in done for key in targets):
                break
            self._repair(trials, retry_errors=first)
            first = False
            ticket = self._claim()
            if ticket is None:
                time.sleep(self.poll_s)  # the last runs are running elsewhere
                continue
            self._run(ticket, train)
        runs = self.out / "runs"
        return {
            k: RunResult.from_dict(read_json(runs / k / "result.json", RESULT_FIELDS), runs / k)
            for k in targets
        }


def _history(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
