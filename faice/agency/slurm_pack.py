"""The server's Slurm dispatch with packing (``faice agency serve --engine slurm --slurm-workers K``).

Without packing every batch is a Slurm job of its own (:class:`faice.agency.slurm_runner.SlurmRunner`).
With it, the batches of one experiment that the dispatcher starts together (it hands them to
:meth:`PackedSlurmRunner.submit_many` in one call, no timing window) become one packed
submission, exactly as ``faice exec`` makes one for a RED file with ``workers: K``
(:func:`faice.engines.slurm.job.submit_batches`): one job array of at most K worker
allocations that claim the batches from a queue in ``<workdir>/slurm-packs/<experiment>-<n>/``
(see :mod:`faice.engines.slurm.worker`). The process's one
:class:`faice.engines.slurm.watcher.Watcher` follows the pack's
:class:`faice.engines.slurm.packed.PackedJob` for every batch in it; each batch's thread
waits for its own and reads the record its worker published. A pack holds the batches of
one experiment, so of one user: the secrets its workers mask are that user's only.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faice.agency.runner import BatchJob, Outcome, Waiter, agency_options, read_record
from faice.agency.slurm_runner import SlurmRunner, SlurmServerSettings
from faice.engines.slurm.watcher import Watcher
from faice.errors import FaiceError
from faice.pipeline.rundir import RunDir
from faice.red.experiment import Batch, Experiment
from faice.secrets import batch_redactor

log = logging.getLogger("faice.agency")

PACKS_DIR = "slurm-packs"
# The dispatcher starts this many batches at once by default: with packing, Slurm sees only
# the workers, so an experiment's batches should reach one pack, not trickle into many.
PACKED_DEFAULT_PARALLEL = 1024


@dataclass
class _Pack:
    """The batches of one experiment submitted together, and what their threads share."""

    outdir: Path
    members: set[str]
    job: Any = None  # the PackedJob once submitted
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    left: set[str] = field(default_factory=set)


class PackedSlurmRunner(SlurmRunner):
    """Runs an experiment's batches as one packed Slurm submission (see the module docstring)."""

    def __init__(self, settings: SlurmServerSettings, workdir: Path, *, watcher: Watcher | None = None):
        """Cancels the packs a previous server process left (the inherited ``cleanup`` then
        only removes a recovered batch's containers: a pack has no attempt directories)."""
        super().__init__(settings, workdir, watcher=watcher)
        self.packs_root = self.workdir / PACKS_DIR
        self._sequence = itertools.count(1)
        self._cancel_previous_server()

    def _cancel_previous_server(self) -> None:
        """Packs of a previous server process: their batches are retried (the dispatcher's
        recovery), so their workers are cancelled and their directories removed."""
        from faice.engines.slurm.job import cancel_jobs_below

        if not self.packs_root.is_dir():
            return
        try:
            for job_id in cancel_jobs_below(self.packs_root, pattern="*"):
                log.info("cancelled Slurm job %s of a pack left by the previous server", job_id)
        except FaiceError as exc:
            log.warning("cancelling the packs of the previous server failed: %s", exc)
        shutil.rmtree(self.packs_root, ignore_errors=True)

    # ------------------------------------------------------------------ many batches

    def submit_many(self, jobs: list[tuple[BatchJob, threading.Event]]) -> list[Waiter]:
        """One packed submission per experiment of the batches the dispatcher started
        together (a batch cancelled meanwhile is left out)."""
        by_experiment: dict[str, list[tuple[BatchJob, threading.Event]]] = {}
        for job, cancel in jobs:
            by_experiment.setdefault(job.experiment_id, []).append((job, cancel))
        waiters: dict[str, Waiter] = {}
        for experiment_id, members in by_experiment.items():
            live = [(job, cancel) for job, cancel in members if not cancel.is_set()]
            for job, cancel in members:
                if cancel.is_set():
                    waiters[job.batch_id] = lambda: Outcome("cancelled", "cancelled before it was submitted")
            if live:
                pack = _Pack(self.packs_root / f"{experiment_id}-{next(self._sequence)}", {j.batch_id for j, _ in live})
                self._submit(pack, [job for job, _ in live])
                for job, cancel in live:
                    waiters[job.batch_id] = self._follow_in_pack(pack, job, cancel)
        return [waiters[job.batch_id] for job, _ in jobs]

    def _follow_in_pack(self, pack: _Pack, job: BatchJob, cancel: threading.Event) -> Waiter:
        redactor = batch_redactor(job.red)
        if pack.error is not None:
            failed = Outcome("failed", redactor.redact(pack.error))

            def failed_wait() -> Outcome:
                self._leave(pack, job.batch_id)
                self.shared_outcome(job, failed)
                return failed

            return failed_wait
        following = self.watcher.follow(pack.job, job.batch_id, cancel,
                                        stop=lambda: pack.job.cancel([job.batch_id]))

        def wait() -> Outcome:
            try:
                cancelled = following.wait()
                outcome = read_record(RunDir(pack.outdir), job.batch_id, redactor=redactor, cancelled=cancelled)
                outcome.extra["slurmJobId"] = pack.job.job_id
                self.shared_outcome(job, outcome)
                return outcome
            finally:
                self._leave(pack, job.batch_id)

        return wait

    def _submit(self, pack: _Pack, jobs: list[BatchJob]) -> None:
        from faice.engines.slurm.job import submit_batches

        try:
            first = jobs[0]
            experiment = self._pack_experiment(first, jobs)
            protected = sorted({v for j in jobs for v in batch_redactor(j.red).values()})
            # The workers judge the pack's batches with those of the experiment's other packs.
            shared = [self.share_stopping(j) for j in jobs]
            options = agency_options(first).replace(stopping_dir=shared[0])
            pack.outdir.mkdir(parents=True, exist_ok=True)
            pack.job = submit_batches(experiment, options, pack.outdir, run_id=first.experiment_id, protected=protected)
            log.info("batches %s: Slurm job %s (packed: %d batches, %d worker(s))",
                     ", ".join(j.batch_id for j in jobs), pack.job.job_id, len(jobs), pack.job.workers)
        except FaiceError as exc:
            pack.error = str(exc)
        except Exception as exc:  # every batch of the pack gets the failure
            pack.error = f"internal error: {type(exc).__name__}: {exc}"

    def _pack_experiment(self, first: BatchJob, jobs: list[BatchJob]) -> Experiment:
        red = first.red  # cli and container are the experiment's: the same for every batch
        data = {**red, "execution": {"engine": "slurm", "settings": dict(self.settings.settings)}}
        batches = [Batch(index=j.index, id=j.batch_id, inputs=j.red["inputs"], outputs=j.red["outputs"],
                         parameters=dict(j.parameters)) for j in jobs]
        return Experiment(f"experiment {first.experiment_id}", data, batches)

    def _leave(self, pack: _Pack, batch_id: str) -> None:
        """The last batch of a pack to end removes its directory (specs, queue, records),
        once none of its workers is queued any more."""
        with pack.lock:
            pack.left.add(batch_id)
            last = pack.left >= pack.members
        if not last:
            return
        if pack.job is None:
            shutil.rmtree(pack.outdir, ignore_errors=True)
            return
        pack.job.remove_specs()
        # A worker still pending (the queue is empty: it will end at once) needs the
        # directory to start: it goes once Slurm queues none of them.
        self.watcher.when_gone(pack.job.job_id, lambda: shutil.rmtree(pack.outdir, ignore_errors=True))
