"""One batch: stage in → run the container → collect outputs → stage out → record.

:func:`run_batch` is the same on every engine: ``faice exec`` calls it for each batch of its
pool, a Slurm task for its one batch on the node, the agency server for each batch it
dispatches. Everything the batch uses comes in through an explicit :class:`BatchContext`;
every resource it takes (GPUs, mounts, the container) is released in ``finally`` blocks, so
failure, cancellation and Ctrl-C leave nothing behind.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faice.connectors.staging import StagingSession
from faice.cwl.commandline import OUTPUTS_DIR
from faice.errors import ConnectorError, EngineError, FaiceError
from faice.pipeline.events import BatchEvent, EventSink, ignore
from faice.pipeline.logstream import OutputCopy
from faice.pipeline.options import RunOptions
from faice.pipeline.plan import BatchPlan, connector_request, input_label, preflight_access
from faice.pipeline.records import (
    BatchRecord,
    BatchState,
    FailureClass,
    new_batch_record,
    now_iso,
)
from faice.pipeline.rundir import RunDir
from faice.runtime.containers import (
    CommandNotRunnable,
    ContainerError,
    ContainerExit,
    ContainerHandle,
    ContainerRuntime,
    ContainerSpec,
    ImageInfo,
)
from faice.runtime.gpus import Gpu, GpuAllocator
from faice.secrets import RedactingFile, Redactor

if TYPE_CHECKING:
    from faice.pipeline.metrics import MetricsReader

# Asked once a second with a running batch's id and objective series: a reason to stop it early, or None.
StopRule = Callable[[str, list], "str | None"]

WAIT_SLICE_S = 1.0  # how often a waiting batch looks at its cancel event and timeout
# What a shell or the container's init prints when it cannot exec the command (126/127).
NOT_RUNNABLE_WORDS = ("not found", "ermission denied", "No such file or directory")


class BatchFailure(Exception):
    """Ends a batch with a failure class; ``transient`` ones may be retried."""

    def __init__(self, failure_class: FailureClass, message: str, *, transient: bool = False):
        super().__init__(message)
        self.failure_class = failure_class
        self.message = message
        self.transient = transient


@dataclass
class BatchContext:
    """What a batch may use, handed in by whoever runs it (no reference back to a run)."""

    run_id: str
    outdir: Path  # the run directory; the batch writes ``batches/<id>/`` only
    scratch: Path  # host temp dir for this run's mount points
    runtime: ContainerRuntime
    image: ImageInfo
    gpus: GpuAllocator  # the one allocator of this process
    staging: StagingSession
    redactor: Redactor  # this batch's secrets (and the process's, for a local user)
    options: RunOptions = field(default_factory=RunOptions)
    cancel: threading.Event = field(default_factory=threading.Event)  # this batch, or the whole run
    hard_stop: threading.Event = field(default_factory=threading.Event)  # no grace period left
    on_event: EventSink = ignore
    environment: dict[str, str] = field(default_factory=dict)
    pull_seconds: float = 0.0  # once per run, shared by its batches
    check_access: bool = False  # probe connectors first (a batch run on its own: Slurm, agency)
    engine: dict[str, Any] | None = None  # where it ran, for the record (Slurm node, agency)
    stop_rule: StopRule | None = None  # early stopping, decided by the scheduler that sees every batch


def run_batch(plan: BatchPlan, context: BatchContext) -> BatchRecord:
    """Run one batch with retries of transient failures; always writes and returns its record."""
    return _BatchRun(plan, context).execute()


def not_started(plan: BatchPlan, context_run_id: str, outdir: Path, reason: str, *,
                redactor: Redactor) -> BatchRecord:
    """The record of a batch that never started (the run was cancelled, too many failed)."""
    record = new_batch_record(plan.id, plan.index, plan.batch.parameters, run_id=context_run_id,
                              command=plan.command.argv, failure_class=FailureClass.CANCELLED, message=reason)
    RunDir(outdir).write_record(record, redact=redactor.redact)
    return record


class _BatchRun:
    """The state of one :func:`run_batch` call."""

    def __init__(self, plan: BatchPlan, context: BatchContext):
        self.plan = plan
        self.context = context
        self.batch = plan.batch
        self.rundir = RunDir(context.outdir)
        self.files = self.rundir.batch(plan.id)
        self.dir = self.files.path
        self.workdir = self.files.outputs
        self.timings: dict[str, float] = {}
        self.gpus: list[Gpu] = []
        self.mounts: list[Path] = []
        self.writable_mounts: dict[Path, str] = {}  # mount point → the input it serves
        self.unsent: list | None = None  # outputs of a command that succeeded but whose stage-out failed
        self.input_dirs: dict[str, Path] = {}  # Directory inputs' host paths (metrics files may be there)
        self.output: OutputCopy | None = None  # the attached stdout/stderr, copied as it comes
        self.reader: MetricsReader | None = None
        image = context.image
        self.record = new_batch_record(
            plan.id, plan.index, plan.batch.parameters, run_id=context.run_id, command=plan.command.argv,
            image={"ref": plan.image_ref, "id": image.id, "digest": image.digest,
                   **({"movedFrom": image.moved_from} if image.moved_from else {})}, engine=context.engine,
        )
        self.record.runtime = context.runtime.name

    # ------------------------------------------------------------------ events

    def event(self, state: str, phase: str | None = None, **extra: Any) -> None:
        try:
            self.context.on_event(BatchEvent(self.batch.id, self.batch.index, state, phase,
                                             parameters=self.batch.parameters, **extra))
        except Exception:
            pass  # a display that fails must not fail the batch

    def _timed(self, phase: str):
        run = self

        class Timer:
            def __enter__(self) -> None:
                run.event("running", phase)
                self.start = time.monotonic()

            def __exit__(self, *exc: object) -> None:
                run.timings[phase] = round(run.timings.get(phase, 0) + time.monotonic() - self.start, 3)

        return Timer()

    def cancelled(self) -> bool:
        return self.context.cancel.is_set()

    # ------------------------------------------------------------------ pipeline

    def execute(self) -> BatchRecord:
        started = time.monotonic()
        record = self.record
        attempts = 0
        self.event("running", "starting")
        while True:
            attempts += 1
            failure = None
            try:
                self._attempt()
            except BatchFailure as exc:
                failure = exc
            except ContainerError as exc:
                failure = BatchFailure(FailureClass.ENGINE, exc.message, transient=exc.transient)
            except ConnectorError as exc:
                failure = BatchFailure(FailureClass.CONNECTOR, exc.message, transient=exc.transient)
            except FaiceError as exc:
                failure = BatchFailure(FailureClass.ENGINE, exc.message)
            except Exception as exc:  # a bug: the batch fails with its name, the run goes on
                failure = BatchFailure(FailureClass.ENGINE, self.context.redactor.redact(f"{type(exc).__name__}: {exc}"))
            if failure is None:
                record.state = BatchState.SUCCEEDED
                break
            cancelled = self.cancelled()
            if cancelled and failure.failure_class != FailureClass.TIMEOUT:
                failure = BatchFailure(FailureClass.CANCELLED, "cancelled before the batch finished")
            if failure.transient and attempts <= self.context.options.retries and not cancelled:
                record.retried_after.append(f"[{failure.failure_class}] {failure.message}")
                time.sleep(min(2.0, 0.5 * attempts))
                continue
            record.fail(failure.failure_class, failure.message)
            record.debug_info = self._debug_info(failure)
            break
        self.timings["total"] = round(time.monotonic() - started, 3)
        self.timings["pull"] = self.context.pull_seconds
        record.attempts = attempts
        record.timings = self.timings
        record.finished = now_iso()
        self.rundir.write_record(record, redact=self.context.redactor.redact)
        self.event(record.state.value, message=record.message,
                   failure_class=record.failure_class.value if record.failure_class else None,
                   seconds=self.timings["total"])
        return record

    def _attempt(self) -> None:
        if self.unsent is not None:
            # The command succeeded and only sending its outputs failed: a retry sends them
            # again instead of re-running what may have been hours of work.
            self._stage_out(self.unsent)
            return
        self._reset_dir()
        if self.context.check_access and not self.context.options.disable_connector_validation:
            try:
                preflight_access([self.plan], self.context.staging)
            except EngineError as exc:
                raise BatchFailure(FailureClass.CONNECTOR, exc.message) from None
        plan = self.plan
        try:
            binds = self._stage_in()
            self._check_cancel()
            if plan.gpu_request.count:
                with self._timed("wait-gpu"):
                    self.gpus = self.context.gpus.acquire(plan.gpu_request, self.context.cancel) or []
                if not self.gpus:
                    raise BatchFailure(FailureClass.CANCELLED, "cancelled while waiting for a GPU")
            self.record.gpus = [g.describe() | ({"reserved": mib} if mib else {})
                                for g, mib in zip(self.gpus, self.context.gpus.reserved(self.gpus), strict=True)]
            self._run_container(binds)
        finally:
            if self.gpus:
                self.context.gpus.release(self.gpus)
                self.gpus = []
            lost = self._umount()
        if lost:
            # The command may have written results through a writable mount: a failed
            # unmount means they may not have arrived, so the batch cannot count as done.
            raise BatchFailure(FailureClass.CONNECTOR, "; ".join(lost))
        with self._timed("collect"):
            collected = self._collect()
        self.unsent = collected
        self._stage_out(collected)

    def _reset_dir(self) -> None:
        if self.dir.exists():
            self.context.runtime.reclaim(self.dir, self.context.image.id, self.context.run_id)
            shutil.rmtree(self.dir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        os.chmod(self.workdir, 0o777)  # writable for whatever user the image runs as

    def _check_cancel(self) -> None:
        if self.cancelled():
            raise BatchFailure(FailureClass.CANCELLED, "cancelled")

    def _stage_in(self) -> list[tuple[str, str, str]]:
        binds: list[tuple[str, str, str]] = []
        staged = self.plan.command.staged
        if not staged:
            return binds
        with self._timed("stage-in"):
            session = self.context.staging
            for item in staged:
                self._check_cancel()
                request = connector_request(input_label(self.batch, item), item.value)
                if item.mount:
                    mountpoint = self.context.scratch / "mounts" / self.batch.id / item.key.replace(":", "-")
                    writable = bool((item.connector or {}).get("access", {}).get("writable"))
                    session.mount_dir(request, mountpoint, writable)
                    self.mounts.append(mountpoint)
                    if writable:
                        self.writable_mounts[mountpoint] = input_label(self.batch, item)
                    host = mountpoint
                    binds.append((str(host), item.container_path, "rw" if writable else "ro"))
                else:
                    host = session.stage_in(request, item.kind)
                    binds.append((str(host), item.container_path, "ro"))
                entry: dict[str, Any] = {"class": item.kind, "path": item.container_path, "hostPath": str(host)}
                if item.kind == "File" and Path(host).is_file():
                    entry["size"] = Path(host).stat().st_size
                assert self.record.inputs is not None
                self.record.inputs[item.key] = entry
                if item.kind == "Directory":
                    self.input_dirs[item.key] = Path(host)
        return binds

    def _umount(self) -> list[str]:
        """Unmount every mount; the failures of writable ones (outputs may be lost) are returned."""
        lost = []
        while self.mounts:
            mountpoint = self.mounts.pop()
            label = self.writable_mounts.pop(mountpoint, None)
            try:
                self.context.staging.umount(mountpoint)
            except Exception as exc:
                message = self.context.redactor.redact(str(exc))
                self.record.cleanup_errors.append(message)
                if label is not None:
                    lost.append(f"{label}: unmounting the writable mount failed, files the command wrote "
                                f"there may be lost: {message}")
        return lost

    # ------------------------------------------------------------------ container

    def _run_container(self, binds: list[tuple[str, str, str]]) -> None:
        context, plan = self.context, self.plan
        runtime = context.runtime
        binds = [(str(self.workdir.resolve()), OUTPUTS_DIR, "rw"), *binds]
        environment = dict(context.environment)
        if self.gpus:
            environment["NVIDIA_VISIBLE_DEVICES"] = ",".join(g.uuid or g.index for g in self.gpus)
            # Inside the container the devices are renumbered from 0.
            environment["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(self.gpus)))
        else:
            # Where nvidia is Docker's default runtime, an image's NVIDIA_VISIBLE_DEVICES=all
            # (every nvidia/cuda image) would hand this batch every GPU, outside the allocator.
            environment["NVIDIA_VISIBLE_DEVICES"] = "void"
        keep = context.options.leave_container
        spec = ContainerSpec(
            image=context.image.id or plan.image_ref,
            command=plan.command.argv,
            run_id=context.run_id,
            batch_id=self.batch.id,
            binds=binds,
            environment=environment,
            ram_mb=plan.ram_mb,
            gpu_ids=[g.uuid or g.index for g in self.gpus],
            keep=keep,
            # Unique per attempt, so a retry or a resumed run never collides with a kept container.
            name=f"faice-{self.batch.id}-{uuid.uuid4().hex[:8]}",
        )
        self._check_cancel()
        handle = None
        process = self.record.process
        assert process is not None
        with self._timed("run"):
            try:
                handle = runtime.create(spec)
                self._attach(handle)
                try:
                    runtime.start(handle)
                except CommandNotRunnable as exc:
                    process["returnCode"] = exc.code
                    raise BatchFailure(FailureClass.EXIT_CODE, self._not_runnable(exc.code)) from None
                process["executed"] = True
                self._read_metrics()
                code = self._wait(handle)
                # A command that exited 0 was not killed (by the OOM killer or anyone): no need
                # to ask the runtime again; otherwise it says whether the RAM limit was hit.
                result = ContainerExit(0, False) if code == 0 else runtime.exit_state(handle)
                process["returnCode"] = result.code
                self._save_logs(handle)
                if keep:
                    self.record.container = handle.name
            finally:
                self._finish_metrics()
                if handle is not None and not keep:
                    runtime.remove(handle)
                elif handle is not None:
                    runtime.forget(handle)
        runtime.reclaim(self.workdir, context.image.id, context.run_id)
        if result.error:
            raise ContainerError(result.error)
        if result.oom:
            raise BatchFailure(FailureClass.OOM, f"out of memory: the command exceeded the RAM limit of {plan.ram_mb} MB "
                               "(container.settings.ram)" if plan.ram_mb else
                               "out of memory: the container was killed by the kernel's OOM killer")
        if result.code != 0:
            if result.code in (126, 127) and self._stderr_blames_argv0():
                # An image ENTRYPOINT (a shell wrapper) that could not exec the command.
                raise BatchFailure(FailureClass.EXIT_CODE, self._not_runnable(result.code))
            raise BatchFailure(FailureClass.EXIT_CODE, f"the command exited with code {result.code}")

    def _stderr_blames_argv0(self) -> bool:
        argv0 = self.plan.command.argv[0] if self.plan.command.argv else ""
        if not argv0 or not self.files.stderr.is_file():
            return False
        if not argv0.startswith("/") and self.workdir.joinpath(argv0).exists():
            return False  # a staged file of the batch: the message is about something it runs
        tail = self.rundir.stderr_tail(self.plan.id, 2000)
        # A shell wrapper says "not found" / "Permission denied"; the container's init (tini,
        # catatonit) says "exec X failed: No such file or directory" / "Permission denied".
        return any(argv0 in line and any(why in line for why in NOT_RUNNABLE_WORDS) for line in tail.splitlines())

    def _not_runnable(self, code: int) -> str:
        argv0 = self.plan.command.argv[0] if self.plan.command.argv else ""
        why = "not found in" if code == 127 else "not executable in"
        return f"command {argv0!r} {why} image {self.plan.image_ref} (exit code {code})"

    def _wait(self, handle: ContainerHandle) -> int:
        """Wait for the container; stop it on cancellation, kill it on timeout."""
        runtime = self.context.runtime
        timeout = self.context.options.timeout
        started = time.monotonic()
        while True:
            code = runtime.wait(handle, WAIT_SLICE_S)
            if code is not None:
                return code
            reason = self._watch()
            if reason is not None:
                self._stop(handle)
                raise BatchFailure(FailureClass.STOPPED_EARLY, reason)
            if self.cancelled():
                self._stop(handle)
                raise BatchFailure(FailureClass.CANCELLED, "cancelled while the command was running")
            if timeout is not None and time.monotonic() - started > timeout:
                try:
                    runtime.kill(handle)
                    runtime.wait(handle, 30)
                    self._save_logs(handle)
                except Exception:
                    pass  # the logs are a courtesy here; the timeout is the failure
                raise BatchFailure(FailureClass.TIMEOUT,
                                   f"the command ran longer than --timeout {timeout:g} s and was killed")

    def _stop(self, handle: ContainerHandle) -> None:
        """Stop with the grace period (kill at once after a second Ctrl-C); keep its logs."""
        runtime = self.context.runtime
        try:
            grace = 0 if self.context.hard_stop.is_set() else self.context.options.stop_grace
            if grace:
                runtime.stop(handle, grace)
            else:
                runtime.kill(handle)
            runtime.wait(handle, 10)
            self._save_logs(handle)
        except Exception:
            pass

    # ------------------------------------------------------------------ watching

    def _attach(self, handle: ContainerHandle) -> None:
        """Before the start: copy stdout/stderr into the batch dir as they come."""
        try:
            chunks = self.context.runtime.attach(handle)
            self.output = OutputCopy(chunks, self.files.streams(), self.context.redactor)
        except Exception:
            self.output = None  # _save_logs fetches the whole log at the end instead

    def _read_metrics(self) -> None:
        """Start reading the command's metrics (``plan.metrics``) while it runs."""
        spec = self.plan.metrics
        if spec is not None and self.reader is None:
            from faice.pipeline.metrics import MetricsReader

            self.reader = MetricsReader.for_batch(
                spec, outputs_dir=self.workdir, stdout_file=self.files.stdout,
                input_dirs=self.input_dirs, inputs=self.batch.inputs, parameters=self.batch.parameters,
                index=self.batch.index)

    def _watch(self) -> str | None:
        """Once a second while the command runs: read new metrics, tell the display, ask the
        early-stopping rule. Returns its reason to stop, or None."""
        latest = None
        if self.reader is not None:
            try:
                latest = self.reader.poll()
            except Exception:
                latest = None  # metrics never fail a batch
        log = (self.output.last_line("stdout") or self.output.last_line("stderr")) if self.output else None
        if latest and latest.get("value") is not None or log:
            self.event("running", "run", metric=latest if latest and latest.get("value") is not None else None,
                       log=self.context.redactor.redact(log) if log else None)
        rule = self.context.stop_rule
        if rule is None or self.reader is None:
            return None
        try:
            return rule(self.batch.id, self.reader.series())
        except Exception:
            return None

    def _finish_metrics(self) -> None:
        """Read the metrics one last time (whatever the outcome) into the record and metrics.json."""
        if self.reader is None:
            return
        from faice.pipeline.metrics import summary

        try:
            if self.output is not None:
                self.output.finish(5)
            result = self.reader.finish()
            self.record.metrics = summary(result)
            self.rundir.write_metrics(self.plan.id, result, redact=self.context.redactor.redact)
        except Exception as exc:
            self.record.metrics = {"problems": [{"source": None, "line": None,
                                                 "reason": self.context.redactor.redact(f"metrics not read: {exc}")}]}
        self.reader = None

    def _save_logs(self, handle: ContainerHandle) -> None:
        """stdout.txt/stderr.txt in the batch dir (+ cli.stdout/stderr files in /cc/outputs)."""
        command = self.plan.command
        redactor = self.context.redactor
        output, self.output = self.output, None
        complete = output is not None and output.finish(30)
        for stream, target in self.files.streams().items():
            if not complete:
                # Streaming failed or hangs: the whole log once more, masked on the way to disk
                # (a new file, so a stuck thread writes to the replaced one).
                partial = target.with_name(target.name + ".part")
                with RedactingFile(partial, redactor) as handle_out:
                    for chunk in self.context.runtime.logs(handle, stream):
                        handle_out.write(chunk)
                os.replace(partial, target)
            named = command.stdout if stream == "stdout" else command.stderr
            if named:
                destination = self.workdir / named
                if not destination.resolve().is_relative_to(self.workdir.resolve()):
                    raise BatchFailure(FailureClass.ENGINE,
                                       f"cli.{stream}: {named!r} leaves the working directory /cc/outputs")
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(target, destination)

    # ------------------------------------------------------------------ outputs

    def _collect(self) -> list:
        from faice.cwl.outputs import collect

        command = self.plan.command
        streams = self.files.streams()
        found = collect(self.workdir, command.globs, command.output_types, streams)
        problems = []
        assert self.record.outputs is not None
        for item in found:
            self.record.outputs[item.key] = item.record(self.workdir, OUTPUTS_DIR)
            if item.problem:
                problems.append(item.problem)
        if problems:
            raise BatchFailure(FailureClass.MISSING_OUTPUT, "; ".join(problems))
        return found

    def _stage_out(self, collected: list) -> None:
        wanted = self.plan.output_connectors()
        if not wanted:
            return
        outputs = self.record.outputs
        assert outputs is not None
        with self._timed("stage-out"):
            errors: list[ConnectorError] = []
            for item in collected:
                value = wanted.get(item.key)
                if value is None or item.path is None or outputs[item.key].get("sent"):
                    continue
                kind = "Directory" if item.kind == "Directory" else "File"
                request = connector_request(f"batches[{self.batch.index}].outputs.{item.key}", value)
                try:
                    self.context.staging.send(request, kind, item.path, root=self.workdir)
                    outputs[item.key]["sent"] = True
                except ConnectorError as exc:
                    errors.append(exc)
            if errors:
                raise BatchFailure(FailureClass.CONNECTOR, "; ".join(e.message for e in errors),
                                   transient=all(e.transient for e in errors))

    def _debug_info(self, failure: BatchFailure) -> list[str]:
        lines = [f"[{failure.failure_class}] {failure.message}"]
        if self.files.stderr.is_file():
            tail = self.rundir.stderr_tail(self.plan.id).splitlines()[-30:]
            if tail:
                lines.append("last lines of stderr:")
                lines.extend(tail)
        elif not (self.record.process or {}).get("executed"):
            # The container never ran: the reason is what `faice logs --stderr` shows.
            self.rundir.write_stream(self.plan.id, "stderr", failure.message, redact=self.context.redactor.redact)
        return lines
