"""How the server runs one batch: the same batch pipeline as ``faice exec``, on this host.

:class:`PipelineRunner` calls :func:`faice.pipeline.batch.run_batch` (through the server's one
:class:`faice.pipeline.host.Host`: GPU assignment, RAM limit, connectors, records) and stops
it through the batch's ``cancel`` event. The dispatcher only knows the small :class:`Runner`
interface, so other places to run (Slurm) plug in.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from faice.errors import FaiceError
from faice.files import read_json, read_tail
from faice.pipeline.host import Host
from faice.pipeline.metrics import thinned
from faice.pipeline.options import RunOptions
from faice.pipeline.plan import plan_batches
from faice.pipeline.records import BatchRecord, FailureClass
from faice.pipeline.rundir import BatchDir, RunDir
from faice.red.experiment import Batch, Experiment
from faice.runtime.gpus import Gpu, GpuAllocator, host_allocator
from faice.secrets import Redactor, batch_redactor

if TYPE_CHECKING:
    from faice.pipeline.stopping import Stopper

# A finished batch's objective series kept in its document (for the early-stopping rule and
# the search's sampler after a restart): at most this many points, evenly thinned.
MAX_KEPT_POINTS = 200

log = logging.getLogger("faice.agency")


@dataclass
class BatchJob:
    batch_id: str
    experiment_id: str
    index: int
    attempt: int
    red: dict[str, Any]  # redVersion, cli, container, inputs, outputs — secrets filled in
    workdir: Path
    disable_connector_validation: bool = False
    gpus: list[Gpu] | None = None  # devices the dispatcher reserved for this batch
    # The experiment's early-stopping rule (the dispatcher's, over all its batches): asked
    # while the batch runs here; the Slurm runners share its finished series with the nodes,
    # where the batch is judged (faice.pipeline.stopping.SharedStopper).
    stopper: Stopper | None = None
    parameters: dict[str, Any] = field(default_factory=dict)  # a search trial's (the server proposed them)


@dataclass
class Outcome:
    state: str  # succeeded | failed | cancelled | stopped (by the early-stopping rule)
    debug_info: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    record: dict[str, Any] | None = None
    retryable: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class Runner(Protocol):
    def run(self, job: BatchJob, cancel: threading.Event) -> Outcome: ...

    def cleanup(self, batch_id: str, runtime: str = "docker") -> None:
        """At server start: what batch ``batch_id`` (running when the server stopped) left,
        removed through its container runtime ``runtime``."""


# What a batch's thread calls to get the outcome of a batch submitted with others (it blocks
# until the batch is final).
Waiter = Callable[[], Outcome]


@runtime_checkable
class ManyRunner(Runner, Protocol):
    """A runner with the batch-submission hook (in the spirit of Snakemake's executor
    ``run_jobs``): the dispatcher hands it the batches it started together in ONE call, and
    each batch's thread then calls its :data:`Waiter`. The Slurm runners are ones
    (:class:`faice.agency.slurm_pack.PackedSlurmRunner` makes one packed submission of them;
    the process's Slurm watcher follows them all)."""

    def submit_many(self, jobs: list[tuple[BatchJob, threading.Event]]) -> list[Waiter]: ...


def default_runner() -> Runner:
    return PipelineRunner()


KNOWN_HOSTS = "known_hosts"
PRIVATE_IMAGES = "private-images.json"


def agency_options(job: BatchJob) -> RunOptions:
    """How every runner of the agency runs a batch: one at a time, lending nothing of the
    server account's own identity (no stored registry logins, no AWS credential chain), with
    one ssh known_hosts per server in its work dir (batches live in ``<workdir>/batches/<id>``),
    never the account's ``~/.ssh/known_hosts``, and a record of the images pulled with a
    user's registry credentials, which other users get only when the registry accepts theirs."""
    server_dir = job.workdir.parents[1]
    return RunOptions(parallel=1, disable_connector_validation=job.disable_connector_validation,
                      account_credentials=False, known_hosts=str(server_dir / KNOWN_HOSTS),
                      private_images=str(server_dir / PRIVATE_IMAGES))


class PipelineRunner:
    """Runs each batch with :func:`faice.pipeline.batch.run_batch` on this host.

    One :class:`faice.pipeline.host.Host` per server: its GPU allocator hands each device to
    one batch at a time across all users. Each batch gets a redactor of its own secrets only."""

    node = "local"

    def __init__(self, host: Host | None = None):
        self._host = host
        self._lock = threading.Lock()

    @property
    def host(self) -> Host:
        with self._lock:
            if self._host is None:
                self._host = Host(host_allocator(None))
            return self._host

    @property
    def gpus(self) -> GpuAllocator:
        """The server's one allocator: the dispatcher places batches with it."""
        return self.host.gpus

    def run(self, job: BatchJob, cancel: threading.Event) -> Outcome:
        red = job.red
        experiment = Experiment.of_batch(
            f"experiment {job.experiment_id}", red,
            Batch(index=job.index, id=job.batch_id, inputs=red["inputs"], outputs=red["outputs"],
                  parameters=dict(job.parameters)),
        )
        redactor = batch_redactor(red)
        outdir = job.workdir / f"attempt-{job.attempt}"
        options = agency_options(job)
        try:
            (plan,) = plan_batches(experiment)
        except FaiceError as exc:
            return Outcome("failed", redactor.redact(str(exc)), retryable=False)
        self.host.remove_leftovers(options.runtime_for(plan.engine))
        record = self.host.run_alone(plan, run_id=job.experiment_id, outdir=outdir, redactor=redactor,
                                     options=options, cancel=cancel, engine={"name": "agency", "node": self.node},
                                     gpus=GpuAllocator(job.gpus, busy="ignore") if job.gpus else None,
                                     stop_rule=job.stopper.check if job.stopper is not None else None)
        return outcome_of(record, RunDir(outdir).batch(job.batch_id), redactor=redactor, cancelled=cancel.is_set())

    def cleanup(self, batch_id: str, runtime: str = "docker") -> None:
        try:
            removed = self.host.remove_batch(runtime, batch_id)
        except Exception as exc:  # no engine (nothing can be left over), or it failed: the server starts
            log.warning("batch %s: could not look for what it left in %s: %s", batch_id, runtime, exc)
            return
        if removed:
            log.info("batch %s: removed what it left in %s: %s", batch_id, runtime, ", ".join(removed))


def outcome_of(record: BatchRecord, files: BatchDir, *, redactor: Redactor, cancelled: bool = False) -> Outcome:
    """What the server stores of a finished batch: its state, reason, record and log tails."""
    skipped: dict[str, int] = {}

    def text(name: str) -> str | None:
        path = files.stream(name)
        if not path.exists():
            return None
        content, skipped[name] = read_tail(path)
        return content

    state = "cancelled" if cancelled or record.failure_class == FailureClass.CANCELLED else record.state.value
    debug = "\n".join(str(d) for d in record.debug_info) if record.debug_info else None
    if state == "stopped" and not debug:
        debug = record.message
    # Like CC-Agency, any failure gets the remaining attempts (the client can disable retries);
    # a batch the early-stopping rule stopped ended as planned.
    return Outcome(state, redactor.redact(debug) if debug else None, text("stdout"), text("stderr"),
                   redactor.redact_data(record.to_dict()), state not in ("cancelled", "stopped"),
                   extra={"skipped": skipped, "series": _series(files)})


def _series(files: BatchDir) -> dict[str, Any]:
    """Every metric's ``[[step, value], …]`` from the batch's metrics.json ({} without one)."""
    data = read_json(files.metrics)
    series = data.get("series") if isinstance(data, dict) else None
    return series if isinstance(series, dict) else {}


def kept_series(series: Any) -> list[list[Any]] | None:
    """A series as a batch document keeps it: well-formed points only, at most MAX_KEPT_POINTS
    (evenly thinned, the last one kept)."""
    if not isinstance(series, list):
        return None
    points = [list(p) for p in series if isinstance(p, (list, tuple)) and len(p) == 2
              and isinstance(p[0], (int, float)) and (p[1] is None or isinstance(p[1], (int, float)))]
    return thinned(points, MAX_KEPT_POINTS)


def read_record(rundir: RunDir, batch_id: str, *, redactor: Redactor, cancelled: bool = False) -> Outcome:
    """The outcome a batch record written by another process (a Slurm task) describes."""
    record = rundir.read_record(batch_id)
    if record is None:
        if cancelled:
            return Outcome("cancelled", "cancelled")
        return Outcome("failed", f"batch record missing or unreadable: {rundir.batch(batch_id).record}")
    return outcome_of(record, rundir.batch(batch_id), redactor=redactor, cancelled=cancelled)
