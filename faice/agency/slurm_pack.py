"""The server's Slurm dispatch with packing (``faice agency serve --engine slurm --slurm-workers K``).

Without packing every batch is a Slurm job of its own (:class:`faice.agency.slurm_runner.SlurmRunner`).
With it, the batches of one experiment that the dispatcher starts together (within
``GATHER_S``) become one packed submission, exactly as ``faice exec`` makes one for a RED
file with ``workers: K``: one job array of at most K worker allocations that claim the
batches from a queue in ``<workdir>/slurm-packs/<experiment>-<n>/`` (see
:mod:`faice.engines.slurm.worker`). Each batch's dispatcher thread then follows its own batch
in the shared :class:`faice.engines.slurm.packed.PackedJob` and reads the record its worker
published. A pack holds the batches of one experiment, so of one user: the secrets its
workers mask are that user's only.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faice.agency.runner import BatchJob, Outcome, agency_options, read_record
from faice.agency.slurm_runner import SlurmRunner, SlurmServerSettings
from faice.errors import FaiceError
from faice.pipeline.records import BatchState
from faice.pipeline.rundir import RunDir
from faice.red.experiment import Batch, Experiment
from faice.secrets import batch_redactor

log = logging.getLogger("faice.agency")

# How long the first batch of an experiment waits for the others the dispatcher starts in
# the same round before the pack is submitted.
GATHER_S = 0.5
PACKS_DIR = "slurm-packs"
# The dispatcher starts this many batches at once by default: with packing, Slurm sees only
# the workers, so an experiment's batches should reach one pack, not trickle into many.
PACKED_DEFAULT_PARALLEL = 1024


@dataclass
class _Pack:
    """The batches of one experiment submitted together, and what their threads share."""

    experiment_id: str
    outdir: Path
    members: dict[str, tuple[BatchJob, threading.Event]] = field(default_factory=dict)
    submitted: threading.Event = field(default_factory=threading.Event)
    job: Any = None  # the PackedJob once submitted
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    states: dict[str, BatchState] = field(default_factory=dict)
    polled_at: float = 0.0
    left: set[str] = field(default_factory=set)


class PackedSlurmRunner(SlurmRunner):
    """Runs an experiment's batches as one packed Slurm submission (see the module docstring)."""

    def __init__(self, settings: SlurmServerSettings, workdir: Path, *, poll_interval: float = 1.0):
        """Cancels the packs a previous server process left (the inherited ``cleanup`` then
        only removes a recovered batch's containers: a pack has no attempt directories)."""
        super().__init__(settings, workdir, poll_interval=poll_interval)
        self.packs_root = self.workdir / PACKS_DIR
        self._lock = threading.Lock()
        self._open: dict[str, _Pack] = {}  # experiment id -> pack still gathering
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

    # ------------------------------------------------------------------ one batch

    def run(self, job: BatchJob, cancel: threading.Event) -> Outcome:
        if cancel.is_set():
            return Outcome("cancelled", "cancelled before it was submitted")
        pack, leader = self._join(job, cancel)
        if leader:
            cancel.wait(GATHER_S)
            with self._lock:
                self._open.pop(job.experiment_id, None)
            self._submit(pack)
        pack.submitted.wait()
        redactor = batch_redactor(job.red)
        try:
            if job.batch_id not in pack.states:  # left out: cancelled while the pack gathered
                return Outcome("cancelled", "cancelled before it was submitted")
            if pack.error is not None:
                return Outcome("failed", redactor.redact(pack.error))
            cancelled = self._follow(job.batch_id, cancel, state=lambda: self._state(pack, job.batch_id),
                                     stop=lambda: self._cancel_in_pack(pack, job.batch_id), job_id=pack.job.job_id)
            outcome = read_record(RunDir(pack.outdir), job.batch_id, redactor=redactor, cancelled=cancelled)
            outcome.extra["slurmJobId"] = pack.job.job_id
            return outcome
        finally:
            self._leave(pack, job.batch_id)

    def _join(self, job: BatchJob, cancel: threading.Event) -> tuple[_Pack, bool]:
        """The experiment's gathering pack (the caller leads it when it is new)."""
        with self._lock:
            pack = self._open.get(job.experiment_id)
            leader = pack is None
            if pack is None:
                name = f"{job.experiment_id}-{next(self._sequence)}"
                pack = self._open[job.experiment_id] = _Pack(job.experiment_id, self.packs_root / name)
            pack.members[job.batch_id] = (job, cancel)
        return pack, leader

    def _submit(self, pack: _Pack) -> None:
        from faice.engines.slurm.job import submit_batches

        jobs = [j for j, cancel in pack.members.values() if not cancel.is_set()]
        try:
            if jobs:
                first = jobs[0]
                experiment = self._pack_experiment(first, jobs)
                protected = sorted({v for j in jobs for v in batch_redactor(j.red).values()})
                options = agency_options(first)
                pack.outdir.mkdir(parents=True, exist_ok=True)
                pack.job = submit_batches(experiment, options, pack.outdir, run_id=first.experiment_id, protected=protected)
                log.info("batches %s: Slurm job %s (packed: %d batches, %d worker(s))",
                         ", ".join(j.batch_id for j in jobs), pack.job.job_id, len(jobs), pack.job.workers)
            pack.states = {j.batch_id: BatchState.PENDING for j in jobs}
        except FaiceError as exc:
            pack.error = str(exc)
            pack.states = {j.batch_id: BatchState.FAILED for j in jobs}
        except Exception as exc:  # never leave the other threads waiting
            pack.error = f"internal error: {type(exc).__name__}: {exc}"
            pack.states = {j.batch_id: BatchState.FAILED for j in jobs}
        finally:
            pack.submitted.set()

    def _pack_experiment(self, first: BatchJob, jobs: list[BatchJob]) -> Experiment:
        red = first.red  # cli and container are the experiment's: the same for every batch
        data = {**red, "execution": {"engine": "slurm", "settings": dict(self.settings.settings)}}
        batches = [Batch(index=j.index, id=j.batch_id, inputs=j.red["inputs"], outputs=j.red["outputs"]) for j in jobs]
        return Experiment(f"experiment {first.experiment_id}", data, batches)

    def _cancel_in_pack(self, pack: _Pack, batch_id: str) -> None:
        """Take a waiting batch out of the queue, or ask its worker to stop it."""
        with pack.lock:
            pack.job.cancel([batch_id])

    def _state(self, pack: _Pack, batch_id: str) -> BatchState | None:
        with pack.lock:
            if time.monotonic() - pack.polled_at >= self.poll_interval:
                pack.states.update(pack.job.poll())
                pack.polled_at = time.monotonic()
            return pack.states.get(batch_id)

    def _leave(self, pack: _Pack, batch_id: str) -> None:
        """The last batch of a pack to end removes its directory (specs, queue, records)."""
        with pack.lock:
            pack.left.add(batch_id)
            last = pack.left >= set(pack.members)
        if last:
            if pack.job is not None:
                pack.job.remove_specs()
            shutil.rmtree(pack.outdir, ignore_errors=True)
