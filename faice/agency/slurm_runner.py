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

An experiment's ``metrics.earlyStopping`` rule is applied on the nodes, where the batches
run: the server writes every finished batch's objective series into
``<workdir>/slurm-stopping/<experiment id>/`` (for all of the experiment's submissions), and
each task or worker judges its batch with those and the live series of the others
(:class:`faice.pipeline.stopping.SharedStopper`), as the dispatcher's rule would.
"""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faice.agency.options import SlurmFlags
from faice.agency.runner import BatchJob, Outcome, Waiter, agency_options, kept_series, read_record
from faice.engines.slurm.watcher import Watcher, shared_watcher
from faice.errors import FaiceError, UsageError
from faice.pipeline.rundir import RunDir
from faice.pipeline.stopping import share_finished
from faice.red.experiment import Batch, Experiment
from faice.secrets import batch_redactor

log = logging.getLogger("faice.agency")

# Per experiment with metrics.earlyStopping: the objective series its batches share (live/,
# batches/), across every Slurm submission of the experiment (faice.pipeline.stopping).
STOPPING_DIR = "slurm-stopping"

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
        """The series a previous server process shared are removed: the dispatcher's rule,
        rebuilt from the store, shares them again at the next batch of their experiment."""
        self.settings = settings
        self.workdir = Path(workdir)
        self.watcher = watcher or shared_watcher()
        self.stopping_root = self.workdir / STOPPING_DIR
        self._sharing: dict[str, int] = {}  # experiment id → its batches in flight that share series
        self._shared: dict[str, set[str]] = {}  # experiment id → the batches whose series are written
        self._sharing_lock = threading.Lock()
        shutil.rmtree(self.stopping_root, ignore_errors=True)

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
        redactor = batch_redactor(job.red)
        try:
            options = agency_options(job).replace(stopping_dir=self.share_stopping(job))
            slurm_job = submit_batches(self._experiment(job), options, outdir, protected=redactor.values())
        except (FaiceError, OSError) as exc:
            failed = Outcome("failed", redactor.redact(str(exc)))
            self.shared_outcome(job, failed)
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
            self.shared_outcome(job, outcome)
            return outcome

        return wait

    # ------------------------------------------------------------------ early stopping

    def share_stopping(self, job: BatchJob) -> str | None:
        """The directory where the experiment's batches on the nodes judge each other by its
        ``metrics.earlyStopping`` rule (None without one), with every finished series the
        dispatcher's rule knows written there. Each call is one batch in flight, ended by
        :meth:`shared_outcome`."""
        if job.stopper is None:
            return None
        directory = self.stopping_root / job.experiment_id
        name = objective_name(job)
        with self._sharing_lock:
            self._sharing[job.experiment_id] = self._sharing.get(job.experiment_id, 0) + 1
            shared = self._shared.setdefault(job.experiment_id, set())
            for batch_id, series in job.stopper.finished_series(excluding=shared).items():
                if name:
                    share_finished(directory, batch_id, name, series)
                shared.add(batch_id)
        return str(directory)

    def shared_outcome(self, job: BatchJob, outcome: Outcome) -> None:
        """The batch ended: its objective series counts for the experiment's batches still
        running (at once, not only from the next submission)."""
        if job.stopper is None:
            return
        name = objective_name(job)
        series = kept_series((outcome.extra.get("series") or {}).get(name)) if name else None
        with self._sharing_lock:
            self._sharing[job.experiment_id] = max(0, self._sharing.get(job.experiment_id, 1) - 1)
            if series is not None and name:
                try:
                    share_finished(self.stopping_root / job.experiment_id, job.batch_id, name, series)
                    self._shared.setdefault(job.experiment_id, set()).add(job.batch_id)
                except OSError as exc:  # the others decide without it
                    log.warning("batch %s: could not share its objective series: %s", job.batch_id, exc)

    def forget_experiment(self, experiment_id: str) -> None:
        """The dispatcher dropped the experiment's rule: its shared series go (unless a batch
        of it is in flight after all)."""
        with self._sharing_lock:
            if self._sharing.get(experiment_id):
                return
            self._sharing.pop(experiment_id, None)
            self._shared.pop(experiment_id, None)
            shutil.rmtree(self.stopping_root / experiment_id, ignore_errors=True)

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


def objective_name(job: BatchJob) -> str | None:
    """The name of the objective the batch's rule judges (its experiment's metrics section)."""
    metrics = job.red.get("metrics")
    objective = metrics.get("objective") if isinstance(metrics, dict) else None
    name = objective.get("name") if isinstance(objective, dict) else None
    return name if isinstance(name, str) else None


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
