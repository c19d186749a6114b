"""Many batches on one host: preflight once, then a pool of workers calling :func:`run_batch`.

    preflight (Docker, leftovers, GPUs, image once, connector access)
      → per batch, on a pool of ``--parallel`` workers: run_batch → record
      → run.json (rewritten at most every SUMMARY_INTERVAL_S while batches run, and at the end)

Keep-going/fail-fast, ``--resume``, cancellation of one batch or the whole run, and signals
(:meth:`HostRun.on_signal` only records the signal; the waiting thread acts on it) live here.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faice.errors import EngineError, FaiceError
from faice.pipeline.batch import BatchContext, not_started, run_batch
from faice.pipeline.events import BatchEvent, EventSink, ignore
from faice.pipeline.host import Host
from faice.pipeline.options import RunOptions
from faice.pipeline.plan import BatchPlan, default_parallel, describe, plan_batches, preflight_access
from faice.pipeline.records import (
    KEPT_ON_RESUME,
    BatchRecord,
    BatchState,
    RunState,
    new_run_id,
    now_iso,
    pending_entry,
)
from faice.pipeline.resume import ResumePlan, save_red_file
from faice.pipeline.rundir import RED_FILE, RunDir
from faice.pipeline.signals import EXIT_SIGNAL
from faice.pipeline.stopping import Stopper

if TYPE_CHECKING:
    from faice.pipeline.search import Ended, Search
from faice.red.experiment import Batch, Experiment
from faice.runtime.docker import owner_token
from faice.runtime.gpus import Gpu, GpuAllocator, GpuRequest, host_allocator
from faice.secrets import REDACTOR, Redactor, batch_redactor

# run.json while batches run: at most this often. It lists every batch, so rewriting it on
# each start and end would cost O(batches²) on a large sweep; the records stay per batch.
SUMMARY_INTERVAL_S = 0.5


@dataclass
class RunSummary:
    """The run.json content and the exit code it implies."""

    data: dict[str, Any]

    @property
    def state(self) -> str:
        return str(self.data.get("state"))

    @property
    def exit_code(self) -> int:
        return 0 if self.state == RunState.SUCCEEDED else 1

    def to_dict(self) -> dict[str, Any]:
        return self.data


class HostRun:
    """One run of an experiment's batches on this host's container runtime."""

    def __init__(
        self,
        experiment: Experiment,
        options: RunOptions,
        outdir: Path,
        *,
        run_id: str | None = None,
        on_event: EventSink = ignore,
        on_note: Callable[[str], None] | None = None,
        gpu_inventory: list[Gpu] | None = None,
        redactor: Redactor = REDACTOR,
        host: Host | None = None,
    ):
        self.experiment = experiment
        self.options = options
        self.outdir = Path(outdir)
        self.rundir = RunDir(self.outdir)
        self.run_id = run_id or new_run_id()
        self.on_event = on_event
        self.on_note = on_note
        self.redactor = redactor
        self.gpu_inventory = gpu_inventory
        self.host = host
        self.stop = threading.Event()
        self.hard_stop = threading.Event()
        self.signals: list[int] = []  # appended by on_signal, acted on by wait()
        self._handled_signals = 0
        self.plans: list[BatchPlan] = []
        self.search: Search | None = None  # sweep.search: batches proposed while the run goes
        self.runtime: Any = None
        self.image: Any = None
        self.gpus: GpuAllocator | None = None
        self.staging: Any = None
        self.tempdir: Path | None = None
        self.pull_seconds = 0.0
        self.preflight_seconds: float | None = None
        self._cancel: dict[str, threading.Event] = {}
        self._records: dict[str, BatchRecord] = {}
        self._thread: threading.Thread | None = None
        self._summary: RunSummary | None = None
        self._error: BaseException | None = None
        self._failures = 0
        self._running: set[str] = set()
        self._stopper: Stopper | None = None  # the early-stopping rule over every batch of the run
        self._lock = threading.Lock()
        self._summary_due = threading.Event()  # run.json is behind: written by _run_all's thread
        self.started = now_iso()

    # ------------------------------------------------------------------ plumbing

    def note(self, text: str) -> None:
        if self.on_note is not None:
            self.on_note(self.redactor.redact(text))

    def allocator(self) -> GpuAllocator:
        if self.gpus is None:
            self.gpus = self.host.gpus if self.host else host_allocator(self.options.gpu_ids, self.gpu_inventory,
                                                                            busy=self.options.gpu_busy)
        return self.gpus

    def plan(self) -> dict[str, Any]:
        """What ``--dry-run`` shows (nothing runs, Docker is not asked)."""
        from faice.red.search import SearchSpec, is_search

        search = is_search(self.experiment.data)
        spec = SearchSpec.from_sweep(self.experiment.data["sweep"]) if search else None
        if spec is None:
            plans = plan_batches(self.experiment)
            parallel = self.options.parallel
        else:
            from faice.red.sweep import search_batch

            plans = plan_batches(self.experiment, [search_batch(self.experiment.data, 0, spec.example())])
            parallel = self.options.parallel or default_parallel(spec.trials, plans[0].ram_mb, self.allocator(),
                                                                 plans[0].gpu_request)
        described = describe(plans, run_id=self.run_id, outdir=self.outdir, parallel=parallel,
                             gpus=self.allocator(), budget=self._sweep_budget(),
                             runtime=self.options.runtime_for(plans[0].engine if plans else "docker"),
                             environment=self.options.preserve_environment)
        if spec is not None:
            described["batches"] = []  # proposed while the run goes
            described["search"] = {"algorithm": spec.algorithm, "trials": spec.trials, "seed": spec.seed,
                                   "parameters": {name: {kind: arguments}
                                                  for name, (kind, arguments) in spec.parameters.items()}}
        return described

    def _sweep_budget(self) -> int | None:
        """The sweep's ``maxConcurrent``: at most that many batches at a time."""
        budget = (self.experiment.data.get("sweep") or {}).get("maxConcurrent")
        return budget if isinstance(budget, int) and budget > 0 else None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> HostRun:
        """Preflight, then the batches, in the background; :meth:`wait` raises their errors.

        The preflight runs there too, so that the caller is already waiting in :meth:`wait`,
        acting on signals, while a connector probe or an image pull may take long."""
        self._thread = threading.Thread(target=self._main, name=f"faice-run-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> RunSummary | None:
        self.handle_signals()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.handle_signals()
                return None
        if self._error is not None:
            raise self._error
        return self._summary

    def cancel(self, batch_id: str | None = None) -> None:
        """Cancel one batch (or, without an id, the whole run)."""
        if batch_id is None:
            self.stop.set()
            for each in list(self._cancel.values()):
                each.set()
            return
        event = self._cancel.get(batch_id)
        if event is not None:
            event.set()

    def kill(self) -> None:
        """Second Ctrl-C: no grace period; containers are killed at once."""
        self.hard_stop.set()
        self.cancel()
        if self.runtime is not None:
            self.runtime.kill_all()

    def on_signal(self, signum: int, _frame: object = None) -> None:
        """A signal handler: records the signal only (no lock, no I/O), so it can never
        deadlock with the thread it interrupted; :meth:`wait` acts on it."""
        self.signals.append(signum)

    def handle_signals(self) -> None:
        while self._handled_signals < len(self.signals):
            self._handled_signals += 1
            if self._handled_signals == 1:
                self.note("stopping: no new batches; running containers get a short grace period "
                          "(press Ctrl-C again to kill them at once)")
                self.cancel()
            else:
                self.kill()

    def _preflight(self) -> None:
        from faice.connectors.staging import StagingSession
        from faice.runtime.tempdirs import create_run_tempdir

        started = time.monotonic()
        self.plans = plan_batches(self.experiment)
        probes = self.plans or self._search_probe()
        first = probes[0] if probes else None
        if first is not None:
            self.allocator().check(first.gpu_request)
        if self.host is None:
            self.host = Host(self.allocator())
        runtime_name = self.options.runtime_for(first.engine if first else "docker")
        self.runtime = self.host.runtime_for(runtime_name)
        removed = self.host.remove_leftovers(runtime_name)
        if removed:
            self.note(f"removed {len(removed)} container(s) left behind by killed runs")
        if first is not None:
            pull_started = time.monotonic()
            self.image, pulled = self.runtime.ensure_image(
                first.image_ref, auth=first.image_auth, pull=self.options.pull,
                on_progress=self._pull_progress, on_note=self.note,
            )
            self.pull_seconds = round(time.monotonic() - pull_started, 3) if pulled else 0.0
        self.tempdir = create_run_tempdir(self.run_id, outdir=self.outdir)
        self.staging = StagingSession(self.tempdir / "staging", redactor=self.redactor, cancel=self.stop,
                                      allowed_programs=self.options.allowed_programs,
                                      identity=self.options.host_identity())
        if not self.options.disable_connector_validation:
            preflight_access(probes, self.staging)
        self._cancel = {p.id: threading.Event() for p in self.plans}
        self.preflight_seconds = round(time.monotonic() - started, 3)

    def _search_probe(self) -> list[BatchPlan]:
        """A search has no batches up front: its sampler (ready before anything runs, so a missing
        Optuna is said at once) and one point of its space stand in for them in the preflight."""
        from faice.red.search import SearchSpec, is_search
        from faice.red.sweep import search_batch

        if not is_search(self.experiment.data):
            return []
        from faice.pipeline.plan import metrics_spec
        from faice.pipeline.search import Search

        metrics = metrics_spec(self.experiment)
        assert metrics is not None  # checked by the RED validation
        self.search = Search(self.experiment, metrics, self.outdir, resume=self.options.resume)
        example = SearchSpec.from_sweep(self.experiment.data["sweep"]).example()
        return plan_batches(self.experiment, [search_batch(self.experiment.data, 0, example)])

    def _pull_progress(self, text: str) -> None:
        if self.stop.is_set():
            raise EngineError(f"interrupted while pulling {self.experiment.source}'s image")
        self.note(f"pull: {text}")

    def _main(self) -> None:
        try:
            try:
                self._preflight()
            except FaiceError:
                if not self.stop.is_set():
                    raise
                self._summary = self._cancelled_before_start()
                return
            self._summary = self._run_all()
        except BaseException as exc:  # surfaced by wait()
            self._error = exc
        finally:
            self._close()

    def _cancelled_before_start(self) -> RunSummary:
        """Cancelled during the preflight: nothing ran; run.json says so (``--resume`` runs
        every batch)."""
        save_red_file(self.rundir, self.experiment.data, self.redactor)
        return self._write_summary(RunState.CANCELLED)

    def _close(self) -> None:
        from faice.runtime.tempdirs import remove_run_tempdir

        if self.search is not None:
            self.search.close()

        if self.runtime is not None and not self.options.leave_container:
            self.runtime.kill_all()
        if self.staging is not None:
            try:
                self.staging.close()
            except Exception:
                pass
            self.staging = None
        if self.tempdir is not None and self.tempdir.exists() and not self.options.leave_container:
            remove_run_tempdir(self.tempdir)
        if self.runtime is not None:
            self.runtime.close()
        self.rundir.release()

    # ------------------------------------------------------------------ scheduling

    def _context(self, plan: BatchPlan) -> BatchContext:
        assert self.tempdir is not None and self.gpus is not None
        return BatchContext(
            run_id=self.run_id,
            outdir=self.outdir,
            scratch=self.tempdir,
            runtime=self.runtime,
            image=self.image,
            gpus=self.gpus,
            staging=self.staging,
            redactor=batch_redactor(plan.batch.inputs, plan.batch.outputs, parent=self.redactor),
            options=self.options,
            cancel=self._cancel[plan.id],
            hard_stop=self.hard_stop,
            on_event=self.on_event,
            environment={k: os.environ[k] for k in self.options.preserve_environment if k in os.environ},
            pull_seconds=self.pull_seconds,
            stop_rule=self._stopper.check if self._stopper is not None else None,
        )

    # ------------------------------------------------------------------ early stopping

    def _remember_series(self, batch_id: str, metrics: Any) -> list | None:
        """A finished batch's whole objective series (it may have ended between two polls),
        for the stopping rule; returned for the search's sampler."""
        if metrics is None or (self._stopper is None and self.search is None):
            return None
        from faice.pipeline.search import objective_series

        series = objective_series(self.rundir, batch_id, metrics.objective.name)
        if series is None:
            return None
        if self._stopper is not None:
            self._stopper.finished(batch_id, series)
        return series

    def _emit(self, event: BatchEvent) -> None:
        try:
            self.on_event(event)
        except Exception:
            pass

    def _run_all(self) -> RunSummary:
        from faice.pipeline.plan import metrics_spec

        self._stopper = Stopper.for_spec(metrics_spec(self.experiment) if self.plans or self.search else None)
        pending: queue.Queue[BatchPlan] = queue.Queue()
        if self.search is not None:
            self._keep_trials(self.search)
        resume = ResumePlan.of(self.rundir, self.experiment.data) if self.options.resume else None
        for plan in self.plans:
            previous = self.rundir.read_record(plan.id) if resume is not None else None
            if resume is not None:
                resume.add(plan.id, plan.batch.parameters, previous)
            if previous is not None and previous.state in KEPT_ON_RESUME:
                self._records[plan.id] = previous
                self._remember_series(plan.id, plan.metrics)
                self._emit(BatchEvent(plan.id, plan.index, "skipped", message=f"{previous.state} before",
                                      parameters=plan.batch.parameters))
            else:
                pending.put(plan)
                self._emit(BatchEvent(plan.id, plan.index, "pending", parameters=plan.batch.parameters))
        if resume is not None:
            for line in resume.lines():
                self.note(line)
        save_red_file(self.rundir, self.experiment.data, self.redactor)
        self._write_summary(RunState.RUNNING)
        count = self.search.remaining if self.search is not None else pending.qsize()
        parallel = self.options.parallel or default_parallel(
            max(1, count), self.plans[0].ram_mb if self.plans else None, self.gpus,
            self.plans[0].gpu_request if self.plans else GpuRequest())
        budget = self._sweep_budget()
        if budget is not None:
            parallel = min(parallel, budget)

        if self.search is not None:
            from faice.pipeline.search import drive

            drive(self.search, _LocalTrials(self), concurrent=min(parallel, max(1, count)))
            return self._write_summary(RunState.CANCELLED if self.stop.is_set() else None,
                                       complete=self.search.remaining == 0)

        def worker() -> None:
            while True:
                try:
                    plan = pending.get_nowait()
                except queue.Empty:
                    return
                if self.stop.is_set() or self._stop_starting():
                    reason = "the run was cancelled" if self.stop.is_set() else "not started: too many batches failed"
                    record = not_started(plan, self.run_id, self.outdir, reason, redactor=self.redactor)
                    self._emit(BatchEvent(plan.id, plan.index, record.state.value, message=reason,
                                          failure_class=str(record.failure_class)))
                    self._ended(plan, record)
                else:
                    self._run_plan(plan)

        workers = [threading.Thread(target=worker, name=f"faice-batch-{i}", daemon=True)
                   for i in range(min(parallel, max(1, count)))]
        for thread in workers:
            thread.start()
        for thread in workers:
            while thread.is_alive():
                thread.join(SUMMARY_INTERVAL_S)
                self._write_summary_if_due()
        return self._write_summary(RunState.CANCELLED if self.stop.is_set() else None)

    def _run_plan(self, plan: BatchPlan) -> tuple[BatchRecord, list | None]:
        """Run one batch in this thread: its record and its objective's series."""
        with self._lock:
            self._running.add(plan.id)
        self._summary_due.set()
        record = run_batch(plan, self._context(plan))
        series = self._remember_series(plan.id, plan.metrics)
        self._ended(plan, record)
        return record, series

    def _ended(self, plan: BatchPlan, record: BatchRecord) -> None:
        with self._lock:
            self._records[plan.id] = record
            self._running.discard(plan.id)
            if record.state == BatchState.FAILED:
                self._failures += 1
        self._summary_due.set()

    def _write_summary_if_due(self) -> None:
        if self._summary_due.is_set():
            self._summary_due.clear()
            self._write_summary(RunState.RUNNING)

    # ------------------------------------------------------------------ search

    def _add_plan(self, batch: Batch) -> BatchPlan:
        """A proposed trial's batch joins the run."""
        plan = plan_batches(self.experiment, [batch])[0]
        cancel = threading.Event()
        with self._lock:
            self.plans.append(plan)
            self._cancel[plan.id] = cancel
        if self.stop.is_set():  # cancel() came between the loop's check and this start
            cancel.set()
        self._emit(BatchEvent(plan.id, plan.index, "pending", parameters=plan.batch.parameters))
        return plan

    def _keep_trials(self, search: Search) -> None:
        """--resume of a search: the finished trials' records stay (and teach the stopping rule)."""
        from faice.pipeline.plan import metrics_spec

        metrics = metrics_spec(self.experiment)
        for batch_id in search.finished_batches():
            previous = self.rundir.read_record(batch_id)
            if previous is not None:
                self._records[batch_id] = previous
                self._remember_series(batch_id, metrics)
        if self.options.resume:
            self.note(f"search: {search.reused} trials reused, {search.remaining} new "
                      f"(trials: {search.spec.trials})")

    def _stop_starting(self) -> bool:
        with self._lock:
            failures = self._failures
        if self.options.fail_fast and failures:
            return True
        return self.options.max_failures is not None and failures >= self.options.max_failures

    def _write_summary(self, phase: RunState | None, *, complete: bool = True) -> RunSummary:
        with self._lock:
            entries = [r.entry() for r in self._records.values()]
            done = set(self._records)
            running = set(self._running)
        entries += [pending_entry(p.id, p.index, p.batch.parameters,
                                  BatchState.RUNNING if p.id in running else BatchState.PENDING)
                    for p in self.plans if p.id not in done]
        from faice import __version__

        header = {
            "runId": self.run_id,
            "source": self.experiment.source,
            "faiceVersion": __version__,
            "redFile": RED_FILE,
            "engine": "ccfaice",
            "image": {"ref": self.plans[0].image_ref if self.plans else None,
                      "id": getattr(self.image, "id", None), "digest": getattr(self.image, "digest", None),
                      **({"movedFrom": self.image.moved_from} if getattr(self.image, "moved_from", None) else {})},
            "outdir": str(self.outdir),
            "started": self.started,
            "owner": owner_token(),  # a later start marks the run interrupted once it is dead
            "timings": {"preflight": self.preflight_seconds, "pull": self.pull_seconds},
        }
        if phase != RunState.RUNNING:
            header["finished"] = now_iso()
        return RunSummary(self.rundir.write_run(header, entries, phase=phase, complete=complete,
                                                redact=self.redactor.redact))


class _LocalTrials:
    """The local engine's side of the search loop (:func:`faice.pipeline.search.drive`): each
    trial's batch runs in a thread of its own (``maxConcurrent``/``--parallel`` at a time)."""

    def __init__(self, run: HostRun):
        self.run = run
        self.done: queue.Queue[Ended] = queue.Queue()

    def start(self, batch: Batch) -> None:
        plan = self.run._add_plan(batch)
        threading.Thread(target=self._trial, args=(plan,), name=f"faice-trial-{plan.index}", daemon=True).start()

    def _trial(self, plan: BatchPlan) -> None:
        from faice.pipeline.search import Ended

        try:
            record, series = self.run._run_plan(plan)
        except BaseException as exc:  # run_batch records its own errors: this is a bug; end the trial anyway
            record = not_started(plan, self.run.run_id, self.run.outdir, f"internal error: {type(exc).__name__}: {exc}",
                                 redactor=self.run.redactor)
            self.run._ended(plan, record)
            series = None
        self.done.put(Ended(plan.id, record, series))

    def ended(self) -> list[Ended]:
        found = []
        try:
            found.append(self.done.get(timeout=SUMMARY_INTERVAL_S))
            while True:
                found.append(self.done.get_nowait())
        except queue.Empty:
            pass
        self.run._write_summary_if_due()
        return found

    def stop_starting(self) -> bool:
        return self.run.stop.is_set() or self.run._stop_starting()


def run_experiment(
    experiment: Experiment,
    options: RunOptions,
    outdir: Path,
    *,
    on_event: EventSink = ignore,
    stop: threading.Event | None = None,
    gpu_inventory: list[Gpu] | None = None,
) -> RunSummary:
    """Run every batch into ``outdir`` and return the summary (blocking); ``stop`` cancels."""
    outdir = Path(outdir)
    previous = RunDir(outdir).prepare(resume=options.resume)
    run = HostRun(experiment, options, outdir, run_id=(previous or {}).get("runId"), on_event=on_event,
                  gpu_inventory=gpu_inventory)
    run.start()
    while (summary := run.wait(0.2)) is None:
        if stop is not None and stop.is_set():
            run.cancel()
    return summary


def interrupted_exit(run: HostRun) -> int | None:
    """The exit code a signal asks for (130 for SIGINT, 143 for SIGTERM), if one came."""
    return EXIT_SIGNAL.get(run.signals[0]) if run.signals else None

