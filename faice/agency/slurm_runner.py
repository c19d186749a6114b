"""How the server runs one batch on a Slurm cluster (``faice agency serve --engine slurm``).

Each attempt of a batch is a one-task job array submitted with the ``slurm`` engine into
``<workdir>/batches/<batch id>/attempt-N``, which must be on a filesystem the compute nodes
share: the task reads its (0600, self-deleting) spec there and writes the batch record back.
The dispatcher hands the batches it starts together to :meth:`SlurmRunner.submit_many` in one
call (the batch-submission hook; :class:`faice.agency.slurm_pack.PackedSlurmRunner` packs
them). The runner does not poll: the process's one
:class:`faice.engines.slurm.watcher.Watcher` follows every submitted batch (one ``squeue``
per round for all of them), scancels it when the batch is cancelled, and wakes the batch's
thread, which reads the record the task wrote, like
:class:`faice.agency.runner.PipelineRunner` does for a local run. Slurm settings come from
the server's command line, not from the client's RED.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faice.agency.options import SlurmFlags
from faice.agency.runner import BatchJob, Outcome, Waiter, agency_options, read_record
from faice.engines.slurm.watcher import Watcher, shared_watcher
from faice.errors import FaiceError, UsageError
from faice.pipeline.rundir import RunDir
from faice.red.experiment import Batch, Experiment
from faice.secrets import batch_redactor

log = logging.getLogger("faice.agency")

# Batches kept submitted at once when --parallel is not given: Slurm queues them fairly.
DEFAULT_PARALLEL = 32

FLAGS = {  # SlurmFlags field → key of the slurm engine's execution.settings
    "partition": "partition",
    "account": "account",
    "qos": "qos",
    "time": "time",
    "python": "python",
}

INT_FLAGS = {  # packing: an experiment's batches share K worker allocations
    "workers": "workers",
    "batches_per_worker": "batchesPerWorker",
}


@dataclass(frozen=True)
class SlurmServerSettings:
    """The slurm engine's ``execution.settings`` every batch of this server is submitted with."""

    settings: dict[str, Any]

    @classmethod
    def from_flags(cls, flags: SlurmFlags) -> SlurmServerSettings:
        settings: dict[str, Any] = {}
        for attr, key in FLAGS.items():
            value = getattr(flags, attr)
            if value is None:
                continue
            if not str(value).strip():
                raise UsageError(f"--slurm-{attr.replace('_', '-')}: expected a non-empty value")
            settings[key] = str(value)
        from faice.engines.slurm.settings import UPPER_BOUNDS

        for attr, key in INT_FLAGS.items():
            number = getattr(flags, attr)
            if number is None:
                continue
            flag = f"--slurm-{attr.replace('_', '-')}"
            if not 1 <= number <= UPPER_BOUNDS[key]:
                raise UsageError(f"{flag} {number}: expected an integer between 1 and {UPPER_BOUNDS[key]}")
            settings[key] = number
        if "batchesPerWorker" in settings and "workers" not in settings:
            raise UsageError("--slurm-batches-per-worker: only with --slurm-workers (packing)")
        extra = list(flags.sbatch_args)
        if any(not a.strip() for a in extra):
            raise UsageError("--slurm-sbatch-arg: expected a non-empty sbatch option, e.g. --constraint=a100")
        if extra:
            settings["extraArgs"] = extra
        result = cls(settings)
        result.engine_settings()  # the slurm engine's own checks, so flags and RED settings agree
        return result

    @property
    def packed(self) -> bool:
        return "workers" in self.settings

    def engine_settings(self):
        """These settings as the slurm engine reads them from ``execution.settings``."""
        from faice.engines.slurm.settings import SlurmSettings

        return SlurmSettings.from_mapping(self.settings, "faice agency serve")


def check_cluster(settings: SlurmServerSettings, workdir: Path) -> None:
    """Fail at start, not at the first batch: the Slurm tools must be there and Slurm must
    accept the server's options (``sbatch --test-only`` checks partition, account, QOS and
    time limit without queueing anything)."""
    from faice.engines.slurm.job import check_submission

    problem = check_submission(settings.engine_settings(), workdir)
    if problem:
        raise UsageError(f"--engine slurm: Slurm refuses the server's --slurm-* options: {problem}")


class SlurmRunner:
    """Runs each batch as a one-task Slurm job array (see the module docstring)."""

    node = "slurm"  # what the agency API reports as the batch's node

    def __init__(self, settings: SlurmServerSettings, workdir: Path, *, watcher: Watcher | None = None):
        self.settings = settings
        self.workdir = Path(workdir)
        self.watcher = watcher or shared_watcher()

    def _experiment(self, job: BatchJob) -> Experiment:
        red = job.red
        data = {**red, "execution": {"engine": "slurm", "settings": dict(self.settings.settings)}}
        batch = Batch(index=job.index, id=job.batch_id, inputs=red["inputs"], outputs=red["outputs"],
                      parameters=dict(job.parameters))
        return Experiment.of_batch(f"experiment {job.experiment_id}", data, batch)

    def run(self, job: BatchJob, cancel: threading.Event) -> Outcome:
        """One batch: submitted alone, its outcome once it is final."""
        (wait,) = self.submit_many([(job, cancel)])
        return wait()

    def submit_many(self, jobs: list[tuple[BatchJob, threading.Event]]) -> list[Waiter]:
        """The batch-submission hook: submit the batches the dispatcher started together and
        return, for each, what its thread calls to wait for its outcome (the watcher follows
        them meanwhile). Here every batch is an array of its own."""
        return [self._submit_one(job, cancel) for job, cancel in jobs]

    def _submit_one(self, job: BatchJob, cancel: threading.Event) -> Waiter:
        from faice.engines.slurm.job import submit_batches

        if cancel.is_set():
            return lambda: Outcome("cancelled", "cancelled before it was submitted")
        outdir = job.workdir / f"attempt-{job.attempt}"
        outdir.mkdir(parents=True, exist_ok=True)
        options = agency_options(job)
        redactor = batch_redactor(job.red)
        try:
            slurm_job = submit_batches(self._experiment(job), options, outdir, protected=redactor.values())
        except FaiceError as exc:
            failed = Outcome("failed", redactor.redact(str(exc)))
            return lambda: failed
        log.info("batch %s: Slurm job %s (attempt %d)", job.batch_id, slurm_job.job_id, job.attempt)
        following = self.watcher.follow(slurm_job, job.batch_id, cancel, stop=slurm_job.cancel)

        def wait() -> Outcome:
            try:
                cancelled = following.wait()
            finally:
                slurm_job.remove_specs()  # a task that never started still holds its secret-bearing spec
            outcome = read_record(RunDir(outdir), job.batch_id, redactor=redactor, cancelled=cancelled)
            outcome.extra["slurmJobId"] = slurm_job.job_id
            return outcome

        return wait

    def cleanup(self, batch_id: str, runtime: str = "docker") -> None:
        """At server start, for a batch that was running when the server stopped: scancel its
        Slurm jobs (every attempt) and remove what it left on this host through its container
        runtime ``runtime`` (containers by label, process groups). Nothing waits for the tasks
        to end (the server must answer soon): a cancelled task stops its container on its node
        and writes into its own attempt directory, never into the next attempt's."""
        from faice.engines.slurm.job import cancel_jobs_below

        try:
            for job_id in cancel_jobs_below(self.workdir / "batches" / batch_id):
                log.info("batch %s: cancelled Slurm job %s left by the previous server", batch_id, job_id)
        except FaiceError as exc:
            log.warning("batch %s: cancelling its Slurm jobs failed: %s", batch_id, exc)
        remove_batch_leftovers(batch_id, runtime)


def remove_batch_leftovers(batch_id: str, runtime: str) -> list[str]:
    """What batch ``batch_id`` left on this host in container runtime ``runtime``; nothing
    when the runtime is not there (no Docker engine: nothing can be left over)."""
    from faice.runtime.select import open_runtime

    try:
        opened = open_runtime(runtime)
    except Exception:
        return []
    try:
        removed = list(opened.remove_batch(batch_id))
    except Exception as exc:  # cleaning up must not stop the server's start
        log.warning("batch %s: could not look for what it left in %s: %s", batch_id, runtime, exc)
        return []
    finally:
        opened.close()
    if removed:
        log.info("batch %s: removed what it left in %s: %s", batch_id, runtime, ", ".join(removed))
    return removed
