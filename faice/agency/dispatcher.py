"""Runs registered batches on this host, with attempts, cancellation, restart recovery,
secret voiding and notifications.

A single scheduling thread claims ``registered`` batches when
:class:`faice.agency.placement.Admission` admits them (server cap, ``batchConcurrencyLimit``,
RAM, GPUs) — users in turn, each user's experiments oldest first, one experiment at a time,
so an experiment that must wait never holds up another's batches — and hands each to a
worker thread running the :class:`Runner`. A runner with the batch-submission hook
(:class:`faice.agency.runner.ManyRunner`: the Slurm runners) gets the batches one round
started in one ``submit_many`` call instead, and each worker thread waits for its own. Every
state change is an optimistic transition in the store, so a cancel that races with a
finishing batch is decided by the database, not by timing.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from faice.agency.notify import Hook, Notifier
from faice.agency.placement import Admission, Claim, Impossible, host_ram_mb
from faice.agency.runner import BatchJob, ManyRunner, Outcome, Runner, Waiter, kept_series
from faice.agency.store import FINAL_STATES, Store
from faice.agency.vault import Vault, unseal

log = logging.getLogger("faice.agency")
ACTIVE = frozenset({"scheduled", "processing"})
# Registered batches of one experiment read at a time (all ask for the same resources).
SCAN_BATCHES = 16


class Dispatcher:
    def __init__(
        self,
        store: Store,
        vault: Vault,
        runner: Runner,
        workdir: Path,
        *,
        parallel: int | None = None,
        max_attempts: int = 2,
        hooks: list[Hook] | None = None,
        paused: bool = False,
    ):
        self.store = store
        self.vault = vault
        self.runner = runner
        # The node CC-Agency's API reports for a batch: "local", or "slurm" for the Slurm runner.
        self.node = getattr(runner, "node", "local")
        self.workdir = workdir
        self.parallel = max(1, parallel or os.cpu_count() or 1)
        self.max_attempts = max(1, max_attempts)
        self.hooks = hooks or []
        self.paused = paused
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._running: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        # experiment id → its early-stopping rule over all its batches (as one local run's)
        self._stoppers: dict[str, Any] = {}
        # A local runner places GPUs and RAM on this host; a Slurm runner leaves that to Slurm.
        local = self.node == "local"
        self.admission = Admission(self.parallel, gpus=getattr(runner, "gpus", None) if local else None,
                                   ram_mb=host_ram_mb() if local else None)
        # One thread per running batch, and one that submits a round's batches together.
        self._pool = ThreadPoolExecutor(self.parallel + 1, thread_name_prefix="batch")
        self._notifier = Notifier(store, self.hooks)
        self._thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)
        from faice.agency.search import SearchDriver

        # sweep.search: the server proposes each search's trials (faice.agency.search)
        self.searches = SearchDriver(store, workdir, parallel=self.parallel, on_end=self._search_ended,
                                     on_batch=self.wake)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.recover()
        self._thread.start()
        self.searches.start()

    def stop(self) -> None:
        """Stop scheduling, cancel running batches (they are retried after a restart)."""
        self._stopping.set()
        self._wake.set()
        self.searches.close()  # no new trials (their logs are replayed at the next start)
        with self._lock:
            for event in self._running.values():
                event.set()
        self._notifier.stop()  # never waits for a hook
        self._pool.shutdown(wait=True)

    def wake(self) -> None:
        self._wake.set()

    def recover(self) -> None:
        """Batches that were running when the server stopped: retry or fail, with the reason."""
        for batch in self.store.batches_in(ACTIVE):
            self.runner.cleanup(batch["_id"], self._runtime_of(batch))
            self._failed(batch, "agency was restarted while the batch was " + batch["state"], retryable=True)
        for batch in self.store.batches_in(FINAL_STATES):
            if not batch.get("protectedKeysVoided"):
                self._void(batch)

    def _runtime_of(self, batch: dict) -> str:
        """The container runtime the batch ran in: its experiment's ``container.engine``."""
        from faice.runtime.select import DEFAULT_RUNTIME, RUNTIME_NAMES

        experiment = self.store.experiment(batch.get("experimentId", "")) or {}
        container = experiment.get("container")
        engine = container.get("engine") if isinstance(container, dict) else None
        return engine if isinstance(engine, str) and engine in RUNTIME_NAMES else DEFAULT_RUNTIME

    # ------------------------------------------------------------ cancellation
    def cancel(self, batch_id: str) -> None:
        with self._lock:
            event = self._running.get(batch_id)
        if event is not None:
            event.set()
        self.wake()

    # ------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                if not self.paused:
                    self._schedule()
                self._notify()
            except Exception:  # a database hiccup must not kill the scheduler
                log.exception("dispatcher round failed")
            self._wake.wait(timeout=2.0)
            self._wake.clear()

    def _schedule(self) -> None:
        """Start what may start now, fairly: users take turns (whoever holds fewest running
        batches first), each user's experiments oldest first. Every batch of an experiment asks
        for the same (RAM, GPUs, its ``batchConcurrencyLimit``), so one that must wait makes
        only its own experiment wait this round — never another's, however many batches wait."""
        if self.admission.full:
            return
        queues: dict[str, list[str]] = {}
        for experiment_id, username in self.store.waiting_experiments():
            queues.setdefault(username, []).append(experiment_id)
        demands: dict[str, tuple[Any, Any]] = {}
        started: list[tuple[dict[str, Any], threading.Event, Claim]] = []
        try:
            while queues and not self.admission.full:
                username = min(queues, key=self.admission.running_of)  # ties: the longest waiting
                experiments = queues[username]
                if not self._start_next(experiments[0], username, demands, started):
                    experiments.pop(0)  # nothing more of it may start this round
                    if not experiments:
                        del queues[username]
        finally:
            self._launch(started)

    def _launch(self, started: list[tuple[dict[str, Any], threading.Event, Claim]]) -> None:
        """Run the batches this round started: each on a thread of its own, or, for a runner
        with the batch-submission hook, all submitted together first (one ``submit_many``)."""
        if not started:
            return
        if isinstance(self.runner, ManyRunner):
            self._pool.submit(self._submit_together, started)
            return
        for batch, event, claim in started:
            self._pool.submit(self._run_batch, batch, event, claim)

    def _submit_together(self, started: list[tuple[dict[str, Any], threading.Event, Claim]]) -> None:
        """Prepare every batch of the round, hand them to the runner in one call, and give each
        a thread that waits for its outcome."""
        assert isinstance(self.runner, ManyRunner)
        prepared: list[tuple[dict[str, Any], threading.Event, Claim, BatchJob]] = []
        for batch, event, claim in started:
            try:
                job = self._prepare(batch, event, claim)
            except Exception as exc:  # the batch's thread fails it, as for any other runner
                self._pool.submit(self._run_batch, batch, event, claim, _raising(exc))
                continue
            if isinstance(job, Outcome):  # ended before any runner saw it (cancelled, secrets gone)
                self._pool.submit(self._run_batch, batch, event, claim, _returning(job))
            else:
                prepared.append((batch, event, claim, job))
        if not prepared:
            return
        try:
            waiters = self.runner.submit_many([(job, event) for _, event, _, job in prepared])
        except Exception as exc:
            waiters = [_raising(exc)] * len(prepared)
        for (batch, event, claim, _), wait in zip(prepared, waiters, strict=True):
            self._pool.submit(self._run_batch, batch, event, claim, wait)

    def _start_next(self, experiment_id: str, username: str, demands: dict[str, tuple[Any, Any]],
                    started: list[tuple[dict[str, Any], threading.Event, Claim]]) -> bool:
        """Start the experiment's next registered batch; False when none may start now."""
        if experiment_id not in demands:
            # ram and gpus are never secret: read without unsealing anything
            experiment = self.store.experiment(experiment_id) or {}
            demands[experiment_id] = (experiment.get("execution"), (experiment.get("container") or {}).get("settings"))
        for batch in self.store.registered_batches(experiment_id, limit=SCAN_BATCHES):
            try:
                claim = self.admission.admit(experiment_id, *demands[experiment_id], owner=username)
            except Impossible as exc:
                self.store.transition(batch["_id"], "failed", expect={"registered"}, node=self.node, debug_info=str(exc))
                self._void(self.store.batch(batch["_id"]))
                continue
            if claim is None:
                return False
            claimed = self.store.transition(
                batch["_id"], "scheduled", expect={"registered"}, node=self.node, count_attempt=True
            )
            if claimed is None:  # cancelled meanwhile
                self.admission.release(claim)
                continue
            event = threading.Event()
            with self._lock:
                self._running[claimed["_id"]] = event
            started.append((claimed, event, claim))
            return True
        return False

    def _run_batch(self, batch: dict[str, Any], cancel: threading.Event, claim: Claim | None = None,
                   wait: Waiter | None = None) -> None:
        """Run the batch (or, submitted together with others, ``wait`` for its outcome) and
        store what came of it."""
        batch_id = batch["_id"]
        try:
            outcome = wait() if wait is not None else self._execute(batch, cancel, claim)
            self._finish(batch, outcome, cancel)
        except Exception as exc:  # never leave a batch stuck in processing
            log.exception("batch %s crashed", batch_id)
            self._failed(self.store.batch(batch_id) or batch, f"internal error: {exc}", retryable=True)
        finally:
            with self._lock:
                self._running.pop(batch_id, None)
            if claim is not None:
                self.admission.release(claim)
            self._forget_stopper_when_done(batch["experimentId"])
            self.wake()
            self.searches.wake(batch["experimentId"])

    def _execute(self, batch: dict[str, Any], cancel: threading.Event, claim: Claim | None = None) -> Outcome:
        job = self._prepare(batch, cancel, claim)
        return job if isinstance(job, Outcome) else self.runner.run(job, cancel)

    def _prepare(self, batch: dict[str, Any], cancel: threading.Event, claim: Claim | None = None) -> BatchJob | Outcome:
        """The batch as a runner gets it (processing now, its secrets filled in), or the
        outcome that ends it before any runner sees it."""
        batch_id = batch["_id"]
        if self.store.transition(batch_id, "processing", expect={"scheduled"}, node=self.node) is None:
            return Outcome("cancelled", "cancelled before it started")
        experiment = self.store.experiment(batch["experimentId"])
        if experiment is None:
            return Outcome("failed", "the batch's experiment is no longer stored", retryable=False)
        try:
            red = {
                "redVersion": experiment["redVersion"],
                "cli": experiment["cli"],
                "container": unseal(self.vault, experiment["container"]),
                "inputs": unseal(self.vault, batch["inputs"]),
                "outputs": unseal(self.vault, batch["outputs"]),
                **({"metrics": experiment["metrics"]} if isinstance(experiment.get("metrics"), dict) else {}),
            }
        except KeyError:
            return Outcome("failed", "the batch's secrets are no longer stored", retryable=False)
        # The runner masks the batch's own secrets (never another user's); the process-wide
        # redactor holds only the server's own credentials.
        job = BatchJob(
            batch_id=batch_id,
            experiment_id=batch["experimentId"],
            index=batch["batchesListIndex"],
            attempt=batch["attempts"],
            red=red,
            workdir=self.workdir / "batches" / batch_id,
            disable_connector_validation=bool(experiment["execution"]["settings"].get("disableConnectorValidation")),
            gpus=claim.gpus if claim is not None and claim.gpus else None,
            parameters=batch["parameters"] if isinstance(batch.get("parameters"), dict) else {},
        )
        job.stopper = self.stopper(experiment)
        return job

    # ------------------------------------------------------------ early stopping
    def stopper(self, experiment: dict[str, Any]) -> Any:
        """The experiment's early-stopping rule (:class:`faice.pipeline.stopping.Stopper`, the
        local engine's), or None without ``metrics.earlyStopping``. Made at its first batch and
        taught the series every finished batch of the experiment left (so also after a restart)."""
        metrics = experiment.get("metrics")
        if not isinstance(metrics, dict) or not metrics.get("earlyStopping"):
            return None
        experiment_id = experiment["_id"]
        with self._lock:
            found = self._stoppers.get(experiment_id)
        if found is not None:
            return found
        from faice.pipeline.stopping import Stopper
        from faice.red.metrics import MetricsSpec

        try:
            stopper = Stopper(MetricsSpec.from_mapping(metrics))
        except Exception:  # validated when it was submitted; never fail a batch over it
            log.exception("experiment %s: its early-stopping rule could not be built", experiment_id)
            return None
        for batch in self.store.list("batches", {"experimentId": experiment_id}):
            series = batch.get("objectiveSeries")
            if batch["state"] in FINAL_STATES and isinstance(series, list):
                stopper.finished(batch["_id"], series)
        with self._lock:
            return self._stoppers.setdefault(experiment_id, stopper)

    def _forget_stopper_when_done(self, experiment_id: str) -> None:
        """Drop the rule of an experiment none of whose batches is left to run (a long-running
        server would otherwise keep every experiment's series); :meth:`stopper` rebuilds it from
        the stored series should a search add a batch later."""
        with self._lock:
            if experiment_id not in self._stoppers:
                return
        if not self.store.has_unfinished(experiment_id):
            with self._lock:
                self._stoppers.pop(experiment_id, None)
            self._runner_forgets(experiment_id)

    def _runner_forgets(self, experiment_id: str) -> None:
        """What the runner keeps for an experiment's rule (the Slurm runners: the series the
        nodes share) goes with the dispatcher's; it is written again should a batch follow."""
        forget = getattr(self.runner, "forget_experiment", None)
        if forget is not None:
            try:
                forget(experiment_id)
            except Exception:  # tidying up never fails a batch
                log.exception("experiment %s: the runner could not forget it", experiment_id)

    def _objective_series(self, batch: dict[str, Any], outcome: Outcome) -> list[list[Any]] | None:
        """The finished batch's objective series, kept in its document and taught to the rule."""
        experiment = self.store.experiment(batch["experimentId"]) or {}
        metrics = experiment.get("metrics")
        if not isinstance(metrics, dict):
            return None
        name = (metrics.get("objective") or {}).get("name")
        series = kept_series((outcome.extra.get("series") or {}).get(name))
        with self._lock:
            stopper = self._stoppers.get(batch["experimentId"])
        if stopper is not None and series is not None:
            stopper.finished(batch["_id"], series)
        return series

    def _finish(self, batch: dict[str, Any], outcome: Outcome, cancel: threading.Event) -> None:
        from faice.secrets import REDACTOR

        batch_id = batch["_id"]
        for name, text in (("stdout", outcome.stdout), ("stderr", outcome.stderr)):
            if text is not None:
                skipped = outcome.extra.get("skipped", {}).get(name, 0)
                self.store.save_log(batch_id, name, REDACTOR.redact(text), skipped=skipped)
        if self._stopping.is_set():
            current = self.store.batch(batch_id)
            if current and current["state"] in ACTIVE:
                return  # the server is shutting down: recover() retries it at the next start
        debug = REDACTOR.redact(outcome.debug_info) if outcome.debug_info else None
        record = REDACTOR.redact_data(outcome.record) if outcome.record else None
        series = self._objective_series(batch, outcome)
        kept = {"objectiveSeries": series} if series is not None else None
        if outcome.state == "succeeded":
            done = self.store.transition(batch_id, "succeeded", expect={"processing"}, node=self.node, debug_info=debug,
                                         ccagent=record, extra=kept)
        elif outcome.state == "stopped" and not cancel.is_set():
            # CC-Agency has no state for it: "cancelled" (ended on purpose, never retried), the
            # reason in debugInfo and faice's record (state stopped, failure class stopped-early).
            done = self.store.transition(batch_id, "cancelled", expect=ACTIVE, node=self.node,
                                         debug_info=debug or "stopped early", ccagent=record, extra=kept)
        elif outcome.state == "cancelled" or cancel.is_set():
            done = self.store.transition(batch_id, "cancelled", expect=ACTIVE, node=self.node, debug_info=debug)
        else:
            done = self._failed(self.store.batch(batch_id) or batch, debug or "batch failed", retryable=outcome.retryable,
                                ccagent=record, extra=kept)
        self._void(done or self.store.batch(batch_id) or batch)
        shutil.rmtree(self.workdir / "batches" / batch_id, ignore_errors=True)

    def _failed(self, batch: dict[str, Any], reason: str, *, retryable: bool, ccagent: Any = None,
                extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Back to ``registered`` when attempts and the experiment allow, else ``failed``."""
        experiment = self.store.experiment(batch["experimentId"]) or {}
        allowed = bool(((experiment.get("execution") or {}).get("settings") or {}).get("retryIfFailed"))
        if retryable and allowed and batch["attempts"] < self.max_attempts:
            return self.store.transition(batch["_id"], "registered", expect=ACTIVE, debug_info=reason, ccagent=ccagent)
        return self.store.transition(batch["_id"], "failed", expect=ACTIVE, node=batch.get("node"), debug_info=reason,
                                     ccagent=ccagent, extra=extra)

    # ------------------------------------------------------------ secrets and notifications
    def _void(self, batch: dict[str, Any] | None) -> None:
        if batch is None or batch["state"] not in FINAL_STATES:
            return
        self.vault.delete_owner(batch["_id"])
        self.store.set_voided(batch["_id"])
        self._void_experiment(batch["experimentId"])

    def _void_experiment(self, experiment_id: str) -> None:
        """Once every batch is final (and a search proposes no more): the experiment's secrets go."""
        states = self.store.experiment_batch_states(experiment_id)
        if all(s in FINAL_STATES for s in states):
            experiment = self.store.experiment(experiment_id) or {}
            if (experiment.get("search") or {}).get("state") == "running":
                return  # its next trials are filled from the sealed template
            self.vault.delete_owner(experiment_id)
            with self._lock:
                self._stoppers.pop(experiment_id, None)
            self._runner_forgets(experiment_id)

    def _search_ended(self, experiment_id: str) -> None:
        self._void_experiment(experiment_id)
        self.wake()

    def _notify(self) -> None:
        self._notifier.poll()  # delivery, marking and retries: faice.agency.notify


def _returning(outcome: Outcome) -> Waiter:
    return lambda: outcome


def _raising(exc: Exception) -> Waiter:
    """A waiter that raises ``exc`` in the batch's thread (it fails the batch, retryable)."""

    def wait() -> Outcome:
        raise exc

    return wait
