"""The local engine (``ccfaice``/``local``): every batch in its own Docker container, concurrently.

    preflight (Docker, leftovers, GPUs, image once, commands, connector access)
      → per batch, on a pool of ``--parallel`` workers: stage in → container → outputs → record

Reusable by the agency server and Slurm tasks: :class:`RunOptions`, :func:`run_experiment`,
:class:`LocalRun` (``start()/wait()/cancel(batch_id)``) and ``RunOptions.batch_records_only``
for a task that runs one batch into a shared run directory.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faice.engines.interrupts import EXIT_SIGNAL, interrupts_to
from faice.errors import EngineError, FaiceError, UsageError
from faice.progress import BatchEvent
from faice.records import (
    batch_entry,
    default_outdir,
    now_iso,
    prepare_outdir,
    read_json,
    read_result,
    summarise,
    write_run,
)
from faice.secrets import REDACTOR


@dataclass
class RunOptions:
    """How to run; ``from_args`` maps the ``faice exec`` flags."""

    parallel: int | None = None
    fail_fast: bool = False
    max_failures: int | None = None
    retries: int = 0
    timeout: float | None = None
    gpu_ids: str | None = None
    disable_pull: bool = False
    leave_container: bool = False
    preserve_environment: list[str] = field(default_factory=list)
    disable_connector_validation: bool = False
    resume: bool = False
    stop_grace: float = 2.0
    run_id: str | None = None
    batch_records_only: bool = False  # Slurm task: write batches/<id>/ only, no run.json
    gpu_inventory: list | None = None  # injected GPUs (tests); None = detect on the host

    @classmethod
    def from_args(cls, args: Any) -> RunOptions:
        def get(name: str, default: Any = None) -> Any:
            value = getattr(args, name, default)
            return default if value is None else value

        parallel = get("parallel")
        if parallel is not None and parallel < 1:
            raise UsageError("--parallel: expected a number ≥ 1")
        if get("retries", 0) < 0:
            raise UsageError("--retries: expected a number ≥ 0")
        if get("timeout") is not None and get("timeout") <= 0:
            raise UsageError("--timeout: expected a number of seconds > 0")
        if get("max_failures") is not None and get("max_failures") < 1:
            raise UsageError("--max-failures: expected a number ≥ 1")
        return cls(
            parallel=parallel,
            fail_fast=bool(get("fail_fast", False)),
            max_failures=get("max_failures"),
            retries=int(get("retries", 0)),
            timeout=get("timeout"),
            gpu_ids=get("gpu_ids"),
            disable_pull=bool(get("disable_pull", False)),
            leave_container=bool(get("leave_container", False)),
            preserve_environment=list(get("preserve_environment", []) or []),
            disable_connector_validation=bool(get("disable_connector_validation", False)),
            resume=bool(get("resume", False)),
        )


@dataclass
class RunSummary:
    """The run.json content and the exit code it implies."""

    data: dict[str, Any]

    @property
    def state(self) -> str:
        return str(self.data.get("state"))

    @property
    def exit_code(self) -> int:
        return 0 if self.state == "succeeded" else 1

    def to_dict(self) -> dict[str, Any]:
        return self.data


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


class LocalRun:
    """One run of an experiment's batches on this host's Docker engine."""

    def __init__(
        self,
        experiment,
        options: RunOptions,
        outdir: Path,
        *,
        only: set[str] | None = None,
        on_event: Callable[[BatchEvent], None] | None = None,
        stop: threading.Event | None = None,
        on_note: Callable[[str], None] | None = None,
    ):
        from faice.gpus import GpuRequest

        self.experiment = experiment
        self.options = options
        self.outdir = Path(outdir)
        self.only = only
        self.on_event = on_event
        self.on_note = on_note
        self.stop = stop or threading.Event()
        self.hard_stop = threading.Event()
        self.run_id = options.run_id or new_run_id()
        settings = experiment.container_settings
        self.image_ref = str((settings.get("image") or {}).get("url") or "")
        self.image_auth = (settings.get("image") or {}).get("auth")
        self.ram_mb = int(settings["ram"]) if settings.get("ram") else None
        self.gpu_request = GpuRequest.from_settings(settings.get("gpus"))
        self.environment = {k: os.environ[k] for k in options.preserve_environment if k in os.environ}
        self.image = None
        self.client = None
        self.tracker = None
        self.gpus = None
        self.tempdir: Path = Path()
        self._staging = None
        self._staging_lock = threading.Lock()
        self._states: dict[str, Any] = {}
        self._records: dict[str, dict[str, Any]] = {}
        self._thread: threading.Thread | None = None
        self._summary: RunSummary | None = None
        self._error: BaseException | None = None
        self._failures = 0
        self._lock = threading.Lock()
        self.started = now_iso()

    # ------------------------------------------------------------------ plumbing

    def emit(self, event: BatchEvent) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                pass

    def note(self, text: str) -> None:
        if self.on_note is not None:
            self.on_note(REDACTOR.redact(text))

    def staging(self):
        with self._staging_lock:
            if self._staging is None:
                from faice.connectors.staging import StagingSession

                self._staging = StagingSession(self.tempdir / "staging")
            return self._staging

    def reclaim(self, path: Path) -> None:
        """Give files the image's user wrote back to the user running faice.

        As root this is a chown on the host; otherwise a throwaway root container of the
        same image does it (only when some file is foreign), so the user can read and
        remove the run directory."""
        path = Path(path)
        if not path.exists():
            return
        uid, gid = os.geteuid(), os.getegid()
        foreign = []
        for root, dirs, files in os.walk(path):
            for name in [*dirs, *files, ""]:
                full = os.path.join(root, name) if name else root
                try:
                    if os.lstat(full).st_uid != uid:
                        foreign.append(full)
                except OSError:
                    pass
        if not foreign:
            if path.name == "outputs":
                os.chmod(path, 0o755)
            return
        if uid == 0:
            for full in foreign:
                try:
                    os.lchown(full, uid, gid)
                except OSError:
                    pass
        elif self.client is not None and self.image is not None:
            from faice.runtime.docker import ContainerSpec

            spec = ContainerSpec(image=self.image.id, command=["chown", "-R", f"{uid}:{gid}", "/cc/reclaim"],
                                 run_id=self.run_id, batch_id="reclaim", binds=[(str(path.resolve()), "/cc/reclaim", "rw")],
                                 user="0:0", workdir="/")
            container = self.tracker.create(spec)
            try:
                container.start()
                container.wait(timeout=120)
            finally:
                self.tracker.remove(container)
        if path.name == "outputs":
            os.chmod(path, 0o755)

    def selected_batches(self) -> list:
        batches = self.experiment.batches
        if self.only is not None:
            unknown = sorted(self.only - {b.id for b in batches})
            if unknown:
                raise UsageError(f"{self.experiment.source}: no batch with id {', '.join(unknown)}")
            batches = [b for b in batches if b.id in self.only]
        return batches

    # ------------------------------------------------------------------ planning

    def build_commands(self) -> dict[str, Any]:
        from faice.cwl.commandline import CommandBuilder

        builder = CommandBuilder(self.experiment.cli, self.experiment.source)
        return {
            b.id: builder.build(b.inputs, label=f"batches[{b.index}].inputs") for b in self.selected_batches()
        }

    def default_parallel(self, count: int) -> int:
        # Containers spend much of their start-up waiting on dockerd, so small hosts still
        # gain from 4 at a time; RAM and GPUs bound it where batches declare them.
        limits = [count, max(4, os.cpu_count() or 1)]
        if self.ram_mb:
            try:
                total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
                limits.append(max(1, int(total_mb * 0.9) // self.ram_mb))
            except (ValueError, OSError):
                pass
        gpu_limit = self.gpus.max_concurrent(self.gpu_request) if self.gpus else None
        if gpu_limit is not None:
            limits.append(gpu_limit)
        return max(1, min(limits))

    def plan(self) -> dict[str, Any]:
        """What ``--dry-run`` shows: batches, parameters, commands, image, GPUs, mounts."""
        from faice.gpus import host_allocator

        commands = self.build_commands()
        self.gpus = host_allocator(self.options.gpu_ids, self.options.gpu_inventory)
        self.gpus.check(self.gpu_request)
        parallel = self.options.parallel or self.default_parallel(len(commands))
        batches = []
        slots: list[list] = []
        for position, batch in enumerate(self.selected_batches()):
            command = commands[batch.id]
            gpus: list[str] = []
            if self.gpu_request.count:
                if position < parallel and (placed := self.gpus.try_acquire(self.gpu_request)):
                    slots.append(placed)  # the batches that start at once; later ones reuse freed GPUs
                gpus = [g.index for g in slots[position % len(slots)]] if slots else []
            batches.append({
                "id": batch.id,
                "index": batch.index,
                "parameters": batch.parameters,
                "command": command.argv,
                "gpus": gpus,
                "mounts": [
                    {"input": s.key, "target": s.container_path, "mode": "rw" if s.mount and
                     (s.connector or {}).get("access", {}).get("writable") else "ro",
                     "connector": (s.connector or {}).get("command"), "hostMount": s.mount}
                    for s in command.staged
                ] + [{"input": None, "target": "/cc/outputs", "mode": "rw",
                      "source": str(self.outdir / "batches" / batch.id / "outputs")}],
            })
        return {
            "runId": self.run_id,
            "image": self.image_ref,
            "ram": self.ram_mb,
            "gpusPerBatch": self.gpu_request.count,
            "parallel": parallel,
            "outdir": str(self.outdir),
            "batches": batches,
        }

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LocalRun:
        """Preflight in the caller's thread (errors raise), then run batches in the background."""
        self._preflight()
        self._thread = threading.Thread(target=self._main, name=f"faice-run-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> RunSummary | None:
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return None
        if self._error is not None:
            raise self._error
        return self._summary

    def cancel(self, batch_id: str | None = None) -> None:
        """Cancel one batch (or, without an id, the whole run)."""
        if batch_id is None:
            self.stop.set()
            return
        state = self._states.get(batch_id)
        if state is not None:
            state.cancel.set()

    def kill(self) -> None:
        """Second Ctrl-C: no grace period; containers are killed at once."""
        self.hard_stop.set()
        self.stop.set()
        if self.tracker is not None:
            self.tracker.kill_all()

    def _preflight(self) -> None:
        from faice.engines.local_batch import BatchState
        from faice.gpus import host_allocator
        from faice.runtime import docker as runtime
        from faice.runtime.tempdirs import create_run_tempdir, remove_stale_tempdirs

        if not self.image_ref:
            raise EngineError(f"{self.experiment.source}: container.settings.image.url: missing")
        started = time.monotonic()
        if self.options.resume:
            self._check_same_experiment()
        self.gpus = host_allocator(self.options.gpu_ids, self.options.gpu_inventory)
        self.gpus.check(self.gpu_request)
        commands = self.build_commands()
        self.client = runtime.connect()
        removed = runtime.remove_leftovers(self.client)
        if removed:
            self.note(f"removed {len(removed)} container(s) left behind by killed runs")
        remove_stale_tempdirs()
        pull_started = time.monotonic()
        self.image, pulled = runtime.ensure_image(
            self.client, self.image_ref, auth=self.image_auth, allow_pull=not self.options.disable_pull,
            on_progress=self._pull_progress,
        )
        self.pull_seconds = round(time.monotonic() - pull_started, 3) if pulled else 0.0
        self.tracker = runtime.ContainerTracker(self.client)
        self.tempdir = create_run_tempdir(self.run_id)
        try:
            if not self.options.disable_connector_validation:
                self._validate_connectors(commands)
        except BaseException:
            self._close()
            raise
        self._states = {b.id: BatchState(b, commands[b.id]) for b in self.selected_batches()}
        self.preflight_seconds = round(time.monotonic() - started, 3)

    def _check_same_experiment(self) -> None:
        """--resume continues the run recorded in --outdir; a different experiment would mix runs."""
        previous = read_json(self.outdir / "run.json") or {}
        recorded = {e.get("id") for e in previous.get("batches") or [] if isinstance(e, dict)}
        current = {b.id for b in self.experiment.batches}
        if recorded and not self.options.batch_records_only and recorded != current:
            raise UsageError(
                f"--resume: {self.outdir} holds a run of a different experiment "
                f"({len(recorded - current)} of its batch ids are not in {self.experiment.source}); "
                "faice never merges two runs",
                hint="use a new --outdir for a changed RED file",
            )

    def _pull_progress(self, text: str) -> None:
        if self.stop.is_set():
            raise EngineError(f"interrupted while pulling {self.image_ref}")
        self.note(f"pull {self.image_ref}: {text}")

    def _validate_connectors(self, commands: dict[str, Any]) -> None:
        """Check every distinct connector access once, concurrently, before any container starts."""
        from concurrent.futures import ThreadPoolExecutor

        from faice.engines.local_batch import connector_request, input_label

        checks: dict[str, tuple] = {}
        for batch in self.selected_batches():
            for item in commands[batch.id].staged:
                operation = "mount-dir" if item.mount else ("receive-file" if item.kind == "File" else "receive-dir")
                request = connector_request(input_label(batch, item), item.value)
                checks.setdefault(json.dumps([operation, item.value.get("connector")], sort_keys=True, default=str),
                                  (request, operation))
            for key, value in (batch.outputs or {}).items():
                if isinstance(value, dict) and value.get("connector"):
                    kind = (self.experiment.cli.get("outputs") or {}).get(key, {}).get("type", "File")
                    operation = "send-dir" if str(kind).startswith("Directory") else "send-file"
                    request = connector_request(f"batches[{batch.index}].outputs.{key}", value)
                    checks.setdefault(json.dumps([operation, value.get("connector")], sort_keys=True, default=str),
                                      (request, operation))
        if not checks:
            return
        session = self.staging()
        with ThreadPoolExecutor(max_workers=min(8, len(checks))) as pool:
            futures = [pool.submit(session.validate, request, operation) for request, operation in checks.values()]
            errors = []
            for future in futures:
                try:
                    future.result()
                except Exception as exc:
                    errors.append(getattr(exc, "message", str(exc)))
        if errors:
            raise EngineError("connector access check failed (nothing was run):\n  " + "\n  ".join(errors),
                              hint="--disable-connector-validation skips these checks")

    def _main(self) -> None:
        try:
            self._summary = self._run_all()
        except BaseException as exc:  # surfaced by wait()
            self._error = exc
        finally:
            self._close()

    def _close(self) -> None:
        from faice.runtime.tempdirs import remove_run_tempdir

        if self.tracker is not None and not self.options.leave_container:
            self.tracker.kill_all()
        if self._staging is not None:
            try:
                self._staging.close()
            except Exception:
                pass
            self._staging = None
        if self.tempdir != Path() and self.tempdir.exists() and not self.options.leave_container:
            remove_run_tempdir(self.tempdir)
        if self.client is not None and (self.tracker is None or not self.tracker.has_live()):
            try:
                self.client.close()
            except Exception:
                pass

    # ------------------------------------------------------------------ scheduling

    def _run_all(self) -> RunSummary:
        from faice.engines.local_batch import BatchRunner

        states = list(self._states.values())
        pending: queue.Queue = queue.Queue()
        for state in states:
            previous = read_result(self.outdir, state.batch.id) if self.options.resume else None
            if previous and previous.get("state") == "succeeded" and previous.get("batchId") == state.batch.id:
                self._records[state.batch.id] = previous
                self.emit(BatchEvent(state.batch.id, state.batch.index, "skipped", message="succeeded before"))
            else:
                pending.put(state)
                self.emit(BatchEvent(state.batch.id, state.batch.index, "pending"))
        self._write_summary("running")
        parallel = self.options.parallel or self.default_parallel(max(1, pending.qsize()))

        def worker() -> None:
            while True:
                try:
                    state = pending.get_nowait()
                except queue.Empty:
                    return
                if self.stop.is_set() or self._stop_starting():
                    record = self._cancelled_record(state)
                else:
                    record = BatchRunner(self, state).execute()
                with self._lock:
                    self._records[state.batch.id] = record
                    if record.get("state") == "failed":
                        self._failures += 1
                self.emit(BatchEvent(state.batch.id, state.batch.index, record["state"],
                                     message=record.get("message"), failure_class=record.get("failureClass"),
                                     seconds=(record.get("timings") or {}).get("total")))
                self._write_summary("running")

        workers = [threading.Thread(target=worker, name=f"faice-batch-{i}", daemon=True)
                   for i in range(min(parallel, max(1, pending.qsize())))]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        return self._write_summary("cancelled" if self.stop.is_set() else "finished")

    def _stop_starting(self) -> bool:
        with self._lock:
            failures = self._failures
        if self.options.fail_fast and failures:
            return True
        return self.options.max_failures is not None and failures >= self.options.max_failures

    def _cancelled_record(self, state) -> dict[str, Any]:
        from faice.records import write_result

        reason = "the run was cancelled" if self.stop.is_set() else "not started: too many batches failed"
        record = {
            "batchId": state.batch.id, "batchIndex": state.batch.index, "runId": self.run_id,
            "parameters": state.batch.parameters, "state": "cancelled", "failureClass": "cancelled",
            "message": reason, "command": state.command.argv,
            "process": {"returnCode": None, "executed": False}, "inputs": {}, "outputs": {},
            "debugInfo": None, "timings": {}, "finished": now_iso(),
        }
        write_result(self.outdir, state.batch.id, record)
        return record

    def _write_summary(self, phase: str) -> RunSummary:
        with self._lock:
            entries = [batch_entry(r) for r in self._records.values()]
            done = set(self._records)
        entries += [
            {"id": s.batch.id, "index": s.batch.index, "state": "pending", "parameters": s.batch.parameters,
             "failureClass": None, "message": None, "gpus": [], "seconds": None}
            for s in self._states.values() if s.batch.id not in done
        ]
        header = {
            "runId": self.run_id,
            "source": self.experiment.source,
            "engine": "ccfaice",
            "image": {"ref": self.image_ref, "id": getattr(self.image, "id", None),
                      "digest": getattr(self.image, "digest", None)},
            "outdir": str(self.outdir),
            "started": self.started,
            "updated": now_iso(),
            "timings": {"preflight": getattr(self, "preflight_seconds", None),
                        "pull": getattr(self, "pull_seconds", None)},
            "state": "running" if phase == "running" else ("cancelled" if phase == "cancelled" else "finished"),
        }
        if phase != "running":
            header["finished"] = now_iso()
        summary = summarise(header, entries)
        if not self.options.batch_records_only:
            write_run(self.outdir, summary)
        return RunSummary(summary)


def run_experiment(
    experiment,
    options: RunOptions,
    outdir: Path,
    *,
    only: set[str] | None = None,
    on_event: Callable[[BatchEvent], None] | None = None,
    stop: threading.Event | None = None,
) -> RunSummary:
    """Run (the selected) batches into ``outdir`` and return the summary (blocking)."""
    outdir = Path(outdir)
    if not options.batch_records_only:
        previous = prepare_outdir(outdir, resume=options.resume)
        if previous and not options.run_id:
            options.run_id = previous.get("runId")
    else:
        outdir.mkdir(parents=True, exist_ok=True)
    run = LocalRun(experiment, options, outdir, only=only, on_event=on_event, stop=stop)
    run.start()
    summary = run.wait()
    assert summary is not None
    return summary


# ---------------------------------------------------------------------- the CLI path


def run(experiment, args) -> int:
    """``faice exec`` for the ccfaice/local engine: progress on stderr, exit 0/1/130/143."""
    from faice.progress import ProgressDisplay, summary_table

    options = RunOptions.from_args(args)
    run_id = new_run_id()
    outdir = Path(args.outdir) if getattr(args, "outdir", None) else default_outdir(run_id)
    if getattr(args, "dry_run", False):
        options.run_id = run_id
        plan = LocalRun(experiment, options, outdir).plan()
        _print_plan(plan, as_json=bool(getattr(args, "json", False)))
        return 0
    previous = prepare_outdir(outdir, resume=options.resume)
    options.run_id = (previous or {}).get("runId") or run_id
    selected = len(experiment.batches)
    live = False if getattr(args, "no_progress", False) else None
    display = ProgressDisplay(selected, live=live)
    local = LocalRun(experiment, options, outdir, on_event=display, on_note=display.note)
    received: list[int] = []

    def on_signal(signum, _frame) -> None:
        received.append(signum)
        if len(received) == 1:
            display.note("stopping: no new batches; running containers get a short grace period "
                         "(press Ctrl-C again to kill them at once)")
            local.stop.set()
        else:
            local.kill()

    with interrupts_to(on_signal), display:
        try:
            local.start()
        except FaiceError:
            if received:  # interrupted during preflight: nothing ran
                return EXIT_SIGNAL[received[0]]
            raise
        while (summary := local.wait(0.2)) is None:
            pass
    if getattr(args, "json", False):
        sys.stdout.write(REDACTOR.redact(json.dumps(summary.to_dict(), indent=2)) + "\n")
        sys.stdout.flush()
    summary_table(summary.to_dict())
    if received:
        return EXIT_SIGNAL[received[0]]
    return summary.exit_code


def _print_plan(plan: dict[str, Any], *, as_json: bool) -> None:
    import shlex

    if as_json:
        sys.stdout.write(REDACTOR.redact(json.dumps(plan, indent=2)) + "\n")
        return
    lines = [
        f"image: {plan['image']}" + (f"   ram: {plan['ram']} MB" if plan["ram"] else ""),
        f"batches: {len(plan['batches'])}   parallel: {plan['parallel']}   "
        f"GPUs per batch: {plan['gpusPerBatch']}   outdir: {plan['outdir']}",
    ]
    for batch in plan["batches"]:
        lines.append(f"\n[{batch['index']}] {batch['id']}")
        if batch["parameters"]:
            lines.append("  parameters: " + ", ".join(f"{k}={v}" for k, v in batch["parameters"].items()))
        lines.append("  command:    " + shlex.join(batch["command"]))
        if batch["gpus"]:
            lines.append("  gpus:       " + ",".join(batch["gpus"]))
        for mount in batch["mounts"]:
            source = mount.get("source") or f"{mount['connector']} connector" + (" (host mount)" if mount["hostMount"] else "")
            lines.append(f"  mount:      {mount['target']} ({mount['mode']}) <- {source}")
    sys.stdout.write(REDACTOR.redact("\n".join(lines)) + "\n")
    sys.stdout.flush()
