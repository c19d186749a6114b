"""What one faice process owns on its host: the container runtime and the GPU allocator.

A process creates one :class:`Host` and every batch it runs draws from it, so two batches of
the same process never get the same GPU, whichever engine asked (``faice exec``'s pool, the
agency server's dispatcher, a Slurm task). :meth:`Host.run_alone` runs one batch without a
run around it: what a Slurm task and the agency server do for each batch they are given.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from faice.errors import FaiceError
from faice.pipeline.batch import BatchContext, StopRule, run_batch
from faice.pipeline.events import EventSink, ignore
from faice.pipeline.options import RunOptions
from faice.pipeline.plan import BatchPlan
from faice.pipeline.records import BatchRecord, FailureClass, new_batch_record
from faice.pipeline.rundir import RunDir
from faice.runtime.containers import ContainerRuntime
from faice.runtime.gpus import GpuAllocator
from faice.secrets import Redactor


class Host:
    """The container runtime (connected on first use) and the one GPU allocator."""

    def __init__(self, gpus: GpuAllocator, runtime: ContainerRuntime | None = None):
        self.gpus = gpus
        self._runtime = runtime  # given (tests): used whatever the name
        self._runtimes: dict[str, ContainerRuntime] = {}
        self._lock = threading.Lock()
        self._cleaned: set[str] = set()
        gpus.own_process = self._owns_process  # its batches' GPU memory is not someone else's

    def _owns_process(self, pid: int) -> bool:
        for runtime in [self._runtime, *self._runtimes.values()]:
            owns = getattr(runtime, "owns_process", None)
            if owns is not None and owns(pid):
                return True
        return False

    @property
    def runtime(self) -> ContainerRuntime:
        """The Docker runtime (or the one given)."""
        return self.runtime_for("docker")

    def runtime_for(self, name: str) -> ContainerRuntime:
        """The runtime ``name`` (``container.engine`` or ``--runtime``), opened on first use."""
        from faice.runtime.select import open_runtime

        with self._lock:
            if self._runtime is not None:
                return self._runtime
            if name not in self._runtimes:
                self._runtimes[name] = open_runtime(name)
            return self._runtimes[name]

    def remove_leftovers(self, name: str = "docker") -> list[str]:
        """Containers and temp dirs of faice processes that died (once per process and runtime)."""
        from faice.runtime.tempdirs import remove_stale_tempdirs

        with self._lock:
            if name in self._cleaned:
                return []
            self._cleaned.add(name)
        runtime = self.runtime_for(name)
        removed = list(getattr(runtime, "remove_leftovers", list)())
        remove_stale_tempdirs(on_dead_run=lambda outdir, owner: RunDir(outdir).mark_interrupted(owner))
        return removed

    def remove_orphans(self, name: str) -> list[str]:
        """What faice processes that died left in runtime ``name``, looked for again now (a
        packed worker, each time a lease of a dead worker expired)."""
        return list(self.runtime_for(name).remove_leftovers())

    def remove_batch(self, name: str, batch_id: str) -> list[str]:
        """What batch ``batch_id`` left in runtime ``name`` on this host, whoever ran it."""
        return list(self.runtime_for(name).remove_batch(batch_id))

    def run_alone(
        self,
        plan: BatchPlan,
        *,
        run_id: str,
        outdir: Path,
        redactor: Redactor,
        options: RunOptions,
        cancel: threading.Event,
        engine: dict[str, Any] | None = None,
        on_event: EventSink = ignore,
        gpus: GpuAllocator | None = None,
        stop_rule: StopRule | None = None,
    ) -> BatchRecord:
        """Run one batch: image, scratch space and a staging session of its own, connector
        access checked first; a failure before the batch could start is recorded too.
        ``gpus``: devices placed beforehand (the agency dispatcher), instead of the host's."""
        from faice.connectors.staging import StagingSession
        from faice.runtime.tempdirs import create_run_tempdir, remove_run_tempdir

        scratch: Path | None = None
        try:
            runtime = self.runtime_for(options.runtime_for(plan.engine))
            started = time.monotonic()
            image, pulled = runtime.ensure_image(plan.image_ref, auth=plan.image_auth, pull=options.pull,
                                                 account_logins=options.account_credentials,
                                                 private_images=options.image_record())
            pull_seconds = round(time.monotonic() - started, 3) if pulled else 0.0
            scratch = create_run_tempdir(run_id)
            with StagingSession(scratch / "staging", redactor=redactor, cancel=cancel,
                                allowed_programs=options.allowed_programs,
                                identity=options.host_identity()) as staging:
                context = BatchContext(
                    run_id=run_id, outdir=outdir, scratch=scratch, runtime=runtime, image=image, gpus=gpus or self.gpus,
                    staging=staging, redactor=redactor, options=options, cancel=cancel, on_event=on_event,
                    pull_seconds=pull_seconds, check_access=True, engine=engine, stop_rule=stop_rule,
                )
                return run_batch(plan, context)
        except FaiceError as exc:
            return failed_before_start(plan, run_id, outdir, exc.message, redactor=redactor, engine=engine)
        finally:
            if scratch is not None:
                remove_run_tempdir(scratch)


def failed_before_start(plan: BatchPlan, run_id: str, outdir: Path, message: str, *,
                        redactor: Redactor, engine: dict[str, Any] | None = None) -> BatchRecord:
    """The record of a batch that could not start (Docker unreachable, image not pulled);
    the reason is its ``stderr.txt`` too, so ``faice logs --stderr`` shows it."""
    failure = FailureClass.CONNECTOR if "connector" in message else FailureClass.ENGINE
    record = new_batch_record(plan.id, plan.index, plan.batch.parameters, run_id=run_id, command=plan.command.argv,
                              failure_class=failure, message=message.splitlines()[0], engine=engine)
    record.debug_info = [message]
    rundir = RunDir(outdir)
    rundir.write_stream(plan.id, "stderr", message, redact=redactor.redact)
    rundir.write_record(record, redact=redactor.redact)
    return record

