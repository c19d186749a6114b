"""One batch on this host: stage in → run the container → collect outputs → stage out → record.

Every resource a batch takes (GPUs, mounts, the container) is released in ``finally``
blocks, so failure, cancellation and Ctrl-C leave nothing behind.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faice.cwl.commandline import OUTPUTS_DIR, BatchCommand, StagedInput
from faice.errors import ConnectorError, EngineError, FaiceError
from faice.progress import BatchEvent
from faice.records import batch_dir, now_iso, write_result
from faice.secrets import REDACTOR

if TYPE_CHECKING:
    from faice.engines.local import LocalRun
    from faice.red.experiment import Batch

STREAM_FILES = {"stdout": "stdout.txt", "stderr": "stderr.txt"}


class BatchFailure(Exception):
    """Ends a batch with a failure class; ``transient`` ones may be retried."""

    def __init__(self, failure_class: str, message: str, *, transient: bool = False):
        super().__init__(message)
        self.failure_class = failure_class
        self.message = message
        self.transient = transient


@dataclass
class BatchState:
    batch: Batch
    command: BatchCommand
    cancel: threading.Event = field(default_factory=threading.Event)
    container: Any = None
    phase: str | None = None


def connector_request(label: str, value: dict[str, Any]):
    from faice.connectors.staging import ConnectorRequest

    connector = value.get("connector") or {}
    return ConnectorRequest(
        label=label,
        command=str(connector.get("command")),
        access=connector.get("access") or {},
        listing=value.get("listing"),
        mount=bool(connector.get("mount")),
        checksum=value.get("checksum"),
        size=value.get("size"),
    )


def input_label(batch: Batch, staged: StagedInput) -> str:
    key, _, index = staged.key.partition(":")
    return f"batches[{batch.index}].inputs.{key}" + (f"[{index}]" if index else "")


class BatchRunner:
    """Runs one batch for a :class:`LocalRun` (which owns docker, staging, GPUs, records)."""

    def __init__(self, run: LocalRun, state: BatchState):
        self.run = run
        self.state = state
        self.batch = state.batch
        self.dir = batch_dir(run.outdir, self.batch.id)
        self.workdir = self.dir / "outputs"
        self.timings: dict[str, float] = {}
        self.record: dict[str, Any] = {}
        self.gpus: list = []
        self.mounts: list[Path] = []
        self.unsent: list | None = None  # outputs of a command that succeeded but whose stage-out failed

    # ------------------------------------------------------------------ events

    def event(self, state: str, phase: str | None = None, **extra: Any) -> None:
        self.state.phase = phase
        self.run.emit(BatchEvent(self.batch.id, self.batch.index, state, phase, **extra))

    def _timed(self, phase: str):
        runner = self

        class Timer:
            def __enter__(self):
                runner.event("running", phase)
                self.start = time.monotonic()

            def __exit__(self, *exc):
                runner.timings[phase] = round(runner.timings.get(phase, 0) + time.monotonic() - self.start, 3)

        return Timer()

    # ------------------------------------------------------------------ pipeline

    def execute(self) -> dict[str, Any]:
        """Run with retries of transient failures; always writes and returns the record."""
        started = time.monotonic()
        self.record = self._base_record()
        attempts = 0
        while True:
            attempts += 1
            failure = None
            try:
                self._attempt()
            except BatchFailure as exc:
                failure = exc
            except FaiceError as exc:
                failure = BatchFailure("connector" if isinstance(exc, ConnectorError) else "engine", exc.message,
                                       transient=bool(getattr(exc, "transient", False)))
            except Exception as exc:  # docker API errors and the like
                failure = _classify_unexpected(exc)
            if failure is None:
                self.record["state"] = "succeeded"
                break
            cancelled = self.state.cancel.is_set() or self.run.stop.is_set()
            if cancelled and failure.failure_class not in ("timeout",):
                failure = BatchFailure("cancelled", "cancelled before the batch finished")
            if failure.transient and attempts <= self.run.options.retries and not cancelled:
                self.record.setdefault("retriedAfter", []).append(f"[{failure.failure_class}] {failure.message}")
                time.sleep(min(2.0, 0.5 * attempts))
                continue
            self.record.update(state="cancelled" if failure.failure_class == "cancelled" else "failed",
                               failureClass=failure.failure_class, message=failure.message)
            self.record["debugInfo"] = self._debug_info(failure)
            break
        self.timings["total"] = round(time.monotonic() - started, 3)
        self.timings["pull"] = getattr(self.run, "pull_seconds", 0.0)  # once per run, shared by its batches
        self.record.update(attempts=attempts, timings=self.timings, finished=now_iso())
        write_result(self.run.outdir, self.batch.id, self.record)
        return self.record

    def _base_record(self) -> dict[str, Any]:
        run = self.run
        return {
            "batchId": self.batch.id,
            "batchIndex": self.batch.index,
            "runId": run.run_id,
            "parameters": self.batch.parameters,
            "state": "running",
            "failureClass": None,
            "message": None,
            "command": self.state.command.argv,
            "process": {"returnCode": None, "executed": False, "stdout": STREAM_FILES["stdout"],
                        "stderr": STREAM_FILES["stderr"]},
            "inputs": {},
            "outputs": {},
            "debugInfo": None,
            "image": {"ref": run.image_ref, "id": run.image.id if run.image else None,
                      "digest": run.image.digest if run.image else None},
            "gpus": [],
            "started": now_iso(),
        }

    def _attempt(self) -> None:
        if self.unsent is not None:
            # The command succeeded and only sending its outputs failed: a retry sends them
            # again instead of re-running what may have been hours of work.
            self._stage_out(self.unsent)
            return
        self._reset_dir()
        try:
            binds = self._stage_in()
            self._check_cancel()
            if self.run.gpu_request.count:
                with self._timed("wait-gpu"):
                    self.gpus = self.run.gpus.acquire(self.run.gpu_request, self.run.stop) or []
                if not self.gpus:
                    raise BatchFailure("cancelled", "cancelled while waiting for a GPU")
            self.record["gpus"] = [{"index": g.index, "uuid": g.uuid, "name": g.name, "vram": g.vram} for g in self.gpus]
            self._run_container(binds)
        finally:
            if self.gpus:
                self.run.gpus.release(self.gpus)
                self.gpus = []
            self._umount()
        with self._timed("collect"):
            collected = self._collect()
        self.unsent = collected
        self._stage_out(collected)

    def _reset_dir(self) -> None:
        if self.dir.exists():
            self.run.reclaim(self.dir)
            shutil.rmtree(self.dir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        os.chmod(self.workdir, 0o777)  # writable for whatever user the image runs as

    def _check_cancel(self) -> None:
        if self.state.cancel.is_set() or self.run.stop.is_set():
            raise BatchFailure("cancelled", "cancelled")

    def _stage_in(self) -> list[tuple[str, str, str]]:
        binds: list[tuple[str, str, str]] = []
        staged = self.state.command.staged
        if not staged:
            return binds
        with self._timed("stage-in"):
            session = self.run.staging()
            for item in staged:
                self._check_cancel()
                label = input_label(self.batch, item)
                request = connector_request(label, item.value)
                if item.mount:
                    mountpoint = self.run.tempdir / "mounts" / self.batch.id / item.key.replace(":", "-")
                    writable = bool((item.connector or {}).get("access", {}).get("writable"))
                    session.mount_dir(request, mountpoint, writable)
                    self.mounts.append(mountpoint)
                    host = mountpoint
                    binds.append((str(host), item.container_path, "rw" if writable else "ro"))
                else:
                    host = session.stage_in(request, item.kind)
                    binds.append((str(host), item.container_path, "ro"))
                entry: dict[str, Any] = {"class": item.kind, "path": item.container_path, "hostPath": str(host)}
                if item.kind == "File" and Path(host).is_file():
                    entry["size"] = Path(host).stat().st_size
                self.record["inputs"][item.key] = entry
        return binds

    def _umount(self) -> None:
        while self.mounts:
            mountpoint = self.mounts.pop()
            try:
                self.run.staging().umount(mountpoint)
            except Exception as exc:
                self.record.setdefault("cleanupErrors", []).append(REDACTOR.redact(str(exc)))

    # ------------------------------------------------------------------ container

    def _run_container(self, binds: list[tuple[str, str, str]]) -> None:
        import requests

        from faice.runtime.docker import ContainerSpec

        run = self.run
        binds = [(str(self.workdir.resolve()), OUTPUTS_DIR, "rw"), *binds]
        environment = dict(run.environment)
        if self.gpus:
            environment["NVIDIA_VISIBLE_DEVICES"] = ",".join(g.uuid or g.index for g in self.gpus)
            # Inside the container the devices are renumbered from 0.
            environment["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(self.gpus)))
        spec = ContainerSpec(
            image=run.image.id if run.image else run.image_ref,
            command=self.state.command.argv,
            run_id=run.run_id,
            batch_id=self.batch.id,
            binds=binds,
            environment=environment,
            ram_mb=run.ram_mb,
            gpu_ids=[g.uuid or g.index for g in self.gpus],
            keep=run.options.leave_container,
            # Unique per attempt, so a retry or a resumed run never collides with a kept container.
            name=f"faice-{self.batch.id}-{uuid.uuid4().hex[:8]}",
        )
        self._check_cancel()
        container = None
        with self._timed("run"):
            try:
                container = self.state.container = run.tracker.create(spec)
                container.start()
                self.record["process"]["executed"] = True
                status = self._wait(container, requests)
                container.reload()
                oom = bool(container.attrs.get("State", {}).get("OOMKilled"))
                code = status
                self.record["process"]["returnCode"] = code
                self._save_logs(container)
                if run.options.leave_container:
                    self.record["container"] = container.name
            finally:
                if container is not None and not run.options.leave_container:
                    run.tracker.remove(container)
                elif container is not None:
                    run.tracker.forget(container)
                self.state.container = None
        self.run.reclaim(self.workdir)
        if oom:
            raise BatchFailure("oom", f"out of memory: the command exceeded the RAM limit of {run.ram_mb} MB "
                               "(container.settings.ram)" if run.ram_mb else
                               "out of memory: the container was killed by the kernel's OOM killer")
        if code != 0:
            argv0 = self.state.command.argv[0] if self.state.command.argv else ""
            if code in (126, 127) and not self.workdir.joinpath(argv0).exists():
                raise BatchFailure("exit-code", f"command {argv0!r} could not be executed in the image (exit code {code})")
            raise BatchFailure("exit-code", f"the command exited with code {code}")

    def _wait(self, container, requests) -> int:
        """Wait for the container; kill it on timeout or cancellation."""
        timeout = self.run.options.timeout
        started = time.monotonic()
        while True:
            try:
                result = container.wait(timeout=1)
                return int(result.get("StatusCode", -1))
            except requests.exceptions.RequestException:
                pass
            if self.state.cancel.is_set() or self.run.stop.is_set():
                self._stop(container)
                raise BatchFailure("cancelled", "cancelled while the command was running")
            if timeout is not None and time.monotonic() - started > timeout:
                try:
                    container.kill()
                    container.wait(timeout=30)
                    self._save_logs(container)
                except Exception:
                    pass  # the logs are a courtesy here; the timeout is the failure
                raise BatchFailure("timeout", f"the command ran longer than --timeout {timeout:g} s and was killed")

    def _stop(self, container) -> None:
        try:
            grace = 0 if self.run.hard_stop.is_set() else self.run.options.stop_grace
            if grace:
                container.stop(timeout=int(grace))
            else:
                container.kill()
        except Exception:
            pass

    def _save_logs(self, container) -> None:
        """stdout.txt/stderr.txt in the batch dir (+ cli.stdout/stderr files in /cc/outputs)."""
        command = self.state.command
        for stream, name in STREAM_FILES.items():
            target = self.dir / name
            with open(target, "wb") as handle:
                for chunk in container.logs(stdout=stream == "stdout", stderr=stream == "stderr", stream=True):
                    handle.write(chunk)
            if REDACTOR:
                target.write_bytes(REDACTOR.redact_bytes(target.read_bytes()))
            named = command.stdout if stream == "stdout" else command.stderr
            if named:
                destination = self.workdir / named
                if not destination.resolve().is_relative_to(self.workdir.resolve()):
                    raise BatchFailure("engine", f"cli.{stream}: {named!r} leaves the working directory /cc/outputs")
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(target, destination)

    # ------------------------------------------------------------------ outputs

    def _collect(self):
        from faice.cwl.outputs import collect

        command = self.state.command
        streams = {k: self.dir / v for k, v in STREAM_FILES.items()}
        found = collect(self.workdir, command.globs, command.output_types, streams)
        problems = []
        for item in found:
            self.record["outputs"][item.key] = item.record(self.workdir, OUTPUTS_DIR)
            if item.problem:
                problems.append(item.problem)
        if problems:
            raise BatchFailure("missing-output", "; ".join(problems))
        return found

    def _stage_out(self, collected) -> None:
        wanted = {k: v for k, v in (self.batch.outputs or {}).items() if isinstance(v, dict) and v.get("connector")}
        if not wanted:
            return
        with self._timed("stage-out"):
            session = self.run.staging()
            errors: list[ConnectorError] = []
            for item in collected:
                value = wanted.get(item.key)
                if value is None or item.path is None or self.record["outputs"][item.key].get("sent"):
                    continue
                kind = "Directory" if item.kind == "Directory" else "File"
                request = connector_request(f"batches[{self.batch.index}].outputs.{item.key}", value)
                try:
                    session.send(request, kind, item.path, root=self.workdir)
                    self.record["outputs"][item.key]["sent"] = True
                except ConnectorError as exc:
                    errors.append(exc)
            if errors:
                raise BatchFailure("connector", "; ".join(e.message for e in errors),
                                   transient=all(e.transient for e in errors))

    def _debug_info(self, failure: BatchFailure) -> list[str]:
        lines = [f"[{failure.failure_class}] {failure.message}"]
        stderr = self.dir / STREAM_FILES["stderr"]
        if stderr.is_file():
            tail = stderr.read_bytes()[-4000:].decode("utf-8", "replace").splitlines()[-30:]
            if tail:
                lines.append("last lines of stderr:")
                lines.extend(tail)
        return lines


def _classify_unexpected(exc: Exception) -> BatchFailure:
    try:
        import docker
        import requests
    except ImportError:  # pragma: no cover
        return BatchFailure("engine", f"{type(exc).__name__}: {exc}")
    if isinstance(exc, docker.errors.APIError):
        # A 4xx (bad mount, missing image) or a 500 from the OCI runtime repeats itself;
        # only a gateway/unavailable answer is worth another attempt.
        return BatchFailure("engine", REDACTOR.redact(f"Docker: {exc.explanation or exc}"),
                            transient=exc.status_code in (502, 503, 504))
    if isinstance(exc, requests.exceptions.RequestException | docker.errors.DockerException):
        return BatchFailure("engine", REDACTOR.redact(f"Docker: {exc}"), transient=True)
    if isinstance(exc, EngineError):
        return BatchFailure("engine", exc.message)
    return BatchFailure("engine", REDACTOR.redact(f"{type(exc).__name__}: {exc}"))
