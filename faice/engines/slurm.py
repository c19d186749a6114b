"""The ``slurm`` engine: one job array per ``faice exec``, one array task per batch.

Each task runs the same batch pipeline as the local engine, on its compute node, and writes
the same records into the shared run directory (see :mod:`faice.engines.slurm_rundir`). This
module submits, follows and cancels; :mod:`faice.engines.slurm_task` is what runs on the node.

The agency server and ``faice status/cancel --outdir`` use the public API:

* ``submit_batches(experiment, options, outdir, only=None) -> SlurmJob``
* ``SlurmJob.poll() -> dict[batch_id, state]``, ``.wait(on_update)``, ``.cancel(batch_ids)``
* ``open_run(outdir) -> list[SlurmJob]``, ``refresh_run(outdir) -> dict`` (rewrites run.json),
  ``cancel_run(outdir, batch_id=None)``
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from faice.engines import slurm_cli
from faice.engines import slurm_rundir as rundir
from faice.engines.interrupts import EXIT_SIGNAL, interrupts_to
from faice.engines.slurm_settings import SlurmSettings, sbatch_options
from faice.errors import EngineError, UsageError
from faice.secrets import REDACTOR

# Batch states as they appear in records and run.json (the local engine's names).
SCHEDULED, PROCESSING = "pending", "running"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})

# Slurm's end states that left no record behind, and the failure class they mean.
FAILURE_CLASS = {
    "CANCELLED": "cancelled",
    "TIMEOUT": "timeout",
    "DEADLINE": "timeout",
    "OUT_OF_MEMORY": "oom",
    "PREEMPTED": "cancelled",
}
# A task that Slurm reports final gets this long for its record to appear (shared filesystems
# cache directory entries) before faice writes a failure record in its place.
RECORD_GRACE_S = 5.0
POLL_INTERVAL_S = 0.5


class SlurmJob:
    """One submitted job array: array task ``i`` runs batch ``batch_ids[i]``."""

    def __init__(self, outdir: Path, entry: dict[str, Any]):
        self.outdir = outdir
        self.job_id: str = entry["jobId"]
        self.tag: str = entry["tag"]
        self.run_id: str = entry["runId"]
        self.batch_ids: list[str] = list(entry["batchIds"])
        self.batch_index: dict[str, int] = dict(entry.get("batchIndex") or {})
        self.batch_parameters: dict[str, Any] = dict(entry.get("batchParameters") or {})
        self._final_since: dict[int, float] = {}
        self._states: dict[str, str] = {}

    @property
    def submission_dir(self) -> Path:
        return rundir.slurm_dir(self.outdir) / self.tag

    def poll(self, only: set[str] | None = None) -> dict[str, str]:
        """The state of every batch of this array (or of those in ``only``: a later array of
        the same run owns the others); writes a failure record for tasks that ended without
        one (cancelled while pending, killed by Slurm, node failure)."""
        slurm_states = slurm_cli.task_states(self.job_id)
        states: dict[str, str] = {}
        for task_id, batch_id in enumerate(self.batch_ids):
            if only is not None and batch_id not in only:
                continue
            if self._states.get(batch_id) in FINAL:
                states[batch_id] = self._states[batch_id]
                continue
            states[batch_id] = self._task_state(task_id, batch_id, slurm_states.get(task_id))
        self._states = states
        return dict(states)

    def _task_state(self, task_id: int, batch_id: str, task: slurm_cli.TaskState | None) -> str:
        if task is not None and not task.is_final:
            return PROCESSING if task.is_running else SCHEDULED
        record = rundir.read_batch_record(self.outdir, batch_id)
        if record is not None and record.get("state") in FINAL:
            return record["state"]
        first = self._final_since.setdefault(task_id, time.monotonic())
        cancelled = task is not None and task.state == "CANCELLED"
        if not cancelled and time.monotonic() - first < RECORD_GRACE_S:
            return PROCESSING
        return self._record_lost_task(task_id, batch_id, task)

    def _record_lost_task(self, task_id: int, batch_id: str, task: slurm_cli.TaskState | None) -> str:
        """Write the record of a batch whose task never wrote one."""
        rundir.remove_task_specs(self.submission_dir, [task_id])
        log = rundir.log_path(self.outdir, self.job_id, task_id)
        if task is None:
            slurm_state, message = "UNKNOWN", "Slurm no longer knows the task and it left no record"
        else:
            slurm_state = task.state
            message = f"Slurm task {self.job_id}_{task_id} ended {task.state}"
            if task.reason and task.reason != "None":
                message += f" ({task.reason})"
            if task.exit_code is not None:
                message += f", exit code {task.exit_code}"
        failure = FAILURE_CLASS.get(slurm_state, "engine")
        state = CANCELLED if failure == "cancelled" else FAILED
        log_text = rundir.tail(log)
        from faice import records

        batch_dir = records.batch_dir(self.outdir, batch_id)
        if log_text and not (batch_dir / "stderr.txt").exists():
            records.atomic_write_text(batch_dir / "stderr.txt", log_text)
        record = {
            "batchId": batch_id,
            "batchIndex": self.batch_index.get(batch_id),
            "parameters": self.batch_parameters.get(batch_id) or {},
            "state": state,
            "failureClass": failure,
            "message": message,
            "command": None,
            "process": None,
            "inputs": None,
            "outputs": None,
            "debugInfo": [message] + ([f"task output ({log.name}):\n{log_text}"] if log_text else []),
            "engine": {"name": "slurm", "jobId": self.job_id, "taskId": task_id, "slurmState": slurm_state},
        }
        records.write_result(self.outdir, batch_id, record)
        return state

    def is_final(self) -> bool:
        return bool(self._states) and all(s in FINAL for s in self._states.values())

    def wait(self, on_update: Callable[[dict[str, str]], None] | None = None, interval: float = POLL_INTERVAL_S) -> dict[str, str]:
        """Poll until every batch is final; ``on_update`` gets the states after every poll."""
        while True:
            states = self.poll()
            if on_update:
                on_update(states)
            if all(s in FINAL for s in states.values()):
                rundir.remove_task_specs(self.submission_dir)
                return states
            time.sleep(interval)

    def cancel(self, batch_ids: Iterable[str] | None = None) -> None:
        """Cancel the array or some batches: running tasks get SIGTERM and stop their
        container; pending ones never start (their secret-bearing specs are removed)."""
        if batch_ids is None:
            task_ids = None
        else:
            wanted = set(batch_ids)
            task_ids = [i for i, b in enumerate(self.batch_ids) if b in wanted]
            if not task_ids:
                return
        try:
            slurm_cli.scancel(self.job_id, task_ids)
        finally:
            # Tasks that already started have taken (deleted) their spec; the rest never will.
            queued = slurm_cli.queued_tasks(self.job_id)
            pending = [t for t, s in queued.items() if not s.is_running and (task_ids is None or t in task_ids)]
            rundir.remove_task_specs(self.submission_dir, pending)


# ----------------------------------------------------------------------------- submission


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def _options_dict(options: Any) -> dict[str, Any]:
    """RunOptions (a dataclass), an argparse Namespace or a mapping → JSON-able dict."""
    if options is None:
        return {}
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        data = dataclasses.asdict(options)
    elif isinstance(options, dict):
        data = dict(options)
    else:
        data = dict(vars(options))
    return {k: v for k, v in data.items() if _json_safe(v)}


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _batch_data(batch) -> dict[str, Any]:
    return {
        "index": batch.index,
        "id": batch.id,
        "inputs": batch.inputs,
        "outputs": batch.outputs,
        "parameters": batch.parameters,
        "doc": batch.doc,
        "cloud": batch.cloud,
    }


def _shared_data(experiment) -> dict[str, Any]:
    """The RED document a task needs (cli, container, execution), without other batches."""
    return {k: v for k, v in experiment.data.items() if k not in ("batches", "inputs", "outputs")}


def job_script(settings: SlurmSettings, submission: Path, run_id: str) -> str:
    """The batch script: hand over to faice's task entry point on the node."""
    command = [settings.python, "-m", "faice.engines.slurm_task", str(submission)]
    return (
        "#!/bin/sh\n"
        f"# faice run {run_id}: array task N runs the batch in tasks/N.json\n"
        f'exec {shlex.join(command)} "$SLURM_ARRAY_TASK_ID"\n'
    )


def submit_batches(
    experiment,
    options: Any,
    outdir: Path,
    only: set[str] | None = None,
    *,
    run_id: str | None = None,
    max_running: int | None = None,
    protected: Iterable[str] | None = None,
) -> SlurmJob:
    """Submit one job array with a task per batch (only those in ``only`` when given).

    ``protected``: the secrets the tasks must mask (default: every value registered with
    the process's redactor; a long-running server passes only the batch's own)."""
    settings = SlurmSettings.from_experiment(experiment)
    outdir = Path(outdir).resolve()
    batches = [b for b in experiment.batches if only is None or b.id in only]
    if not batches:
        raise EngineError("Slurm engine: no batches to submit")
    previous = rundir.read_submissions(outdir)
    run_id = run_id or (previous[0]["runId"] if previous else new_run_id())
    tag, submission = rundir.new_submission_dir(outdir)
    option_data = _options_dict(options)
    option_data["run_id"] = run_id
    rundir.write_json(submission / "options.json", option_data)
    shared = _shared_data(experiment)
    protected = sorted(set(protected)) if protected is not None else REDACTOR.values()
    for task_id, batch in enumerate(batches):
        # A stale record of an earlier attempt must not pass for this attempt's result.
        rundir.batch_record_path(outdir, batch.id).unlink(missing_ok=True)
        rundir.write_task_spec(
            submission,
            task_id,
            {"source": experiment.source, "data": shared, "batch": _batch_data(batch), "protected": protected},
        )
    script = submission / "job.sh"
    script.write_text(job_script(settings, submission, run_id), encoding="utf-8")
    limit = max_running or settings.max_running
    argv = sbatch_options(
        settings,
        experiment.container_settings,
        job_name=f"faice-{run_id}",
        array=slurm_cli.array_spec(len(batches), limit),
        output=rundir.log_pattern(outdir),
        workdir=str(outdir),
    )
    try:
        job_id = slurm_cli.sbatch(str(script), argv)
    except BaseException:
        rundir.remove_task_specs(submission)
        raise
    entry = {
        "tag": tag,
        "jobId": job_id,
        "runId": run_id,
        "batchIds": [b.id for b in batches],
        "batchIndex": {b.id: b.index for b in batches},
        "batchParameters": {b.id: b.parameters for b in batches},
        "submittedAt": rundir.now(),
        "sbatch": argv,
    }
    rundir.add_submission(outdir, entry)
    job = SlurmJob(outdir, entry)
    write_run_summary(outdir, experiment=experiment, states={b.id: SCHEDULED for b in batches})
    return job


# ----------------------------------------------------------------------------- run directory


def open_run(outdir: Path) -> list[SlurmJob]:
    """The job arrays of a Slurm run directory, oldest first."""
    outdir = Path(outdir).resolve()
    if not rundir.is_slurm_run(outdir):
        raise UsageError(f"{outdir}: not a Slurm run directory (no slurm/{rundir.SUBMISSIONS})")
    return [SlurmJob(outdir, entry) for entry in rundir.read_submissions(outdir)]


def current_states(jobs: list[SlurmJob]) -> dict[str, str]:
    """Batch states over all arrays of a run; each batch is asked of the latest array that
    ran it (``--resume`` re-submits failed batches in a new array)."""
    owner = {batch_id: job for job in jobs for batch_id in job.batch_ids}
    states: dict[str, str] = {}
    for job in jobs:
        mine = {b for b, j in owner.items() if j is job}
        if mine:
            states.update(job.poll(mine))
    return states


def refresh_run(outdir: Path) -> dict[str, Any]:
    """Ask Slurm for the state of every batch, rewrite run.json and return it."""
    jobs = open_run(outdir)
    return write_run_summary(Path(outdir).resolve(), states=current_states(jobs))


def cancel_run(outdir: Path, batch_id: str | None = None) -> list[str]:
    """Cancel every unfinished batch of a Slurm run (or one batch); returns the batch ids."""
    jobs = open_run(outdir)
    states = current_states(jobs)
    if batch_id is not None and batch_id not in states:
        raise UsageError(f"{outdir}: no batch {batch_id!r} in this run")
    cancelled = [b for b, s in states.items() if s not in FINAL and (batch_id is None or b == batch_id)]
    owner = {b: job for job in jobs for b in job.batch_ids}
    for job in jobs:
        mine = [b for b in cancelled if owner[b] is job]
        if mine:
            job.cancel(None if len(mine) == len(job.batch_ids) else mine)
    return cancelled


def wait_run(jobs: list[SlurmJob], on_update: Callable[[dict[str, str]], None] | None = None) -> dict[str, str]:
    """Poll every array of a run until each batch is final."""
    while True:
        states = current_states(jobs)
        if on_update:
            on_update(states)
        if all(s in FINAL for s in states.values()):
            for job in jobs:
                rundir.remove_task_specs(job.submission_dir)
            return states
        time.sleep(POLL_INTERVAL_S)


def write_run_summary(outdir: Path, *, states: dict[str, str], experiment=None) -> dict[str, Any]:
    """run.json for a Slurm run: the local engine's shape (built by :mod:`faice.records`) with
    the live Slurm state of batches that have no record yet, plus the Slurm job ids."""
    from faice import records

    outdir = Path(outdir)
    old = records.read_json(outdir / records.RUN_FILE) or {}
    known = {e["id"]: e for e in old.get("batches", []) if isinstance(e, dict) and e.get("id")}
    if experiment is not None:
        for batch in experiment.batches:
            known.setdefault(batch.id, {"id": batch.id, "index": batch.index, "parameters": batch.parameters})
    entries = []
    for batch_id, entry in known.items():
        state = states.get(batch_id, entry.get("state"))
        record = records.read_result(outdir, batch_id) if state in FINAL or state is None else None
        if record is not None:
            entries.append(records.batch_entry(record))
        else:
            entries.append({**entry, "state": state or SCHEDULED, "failureClass": None})
    submissions = rundir.read_submissions(outdir)
    live = any(e["state"] not in FINAL for e in entries)
    header = {k: v for k, v in old.items() if k not in ("batches", "counts", "state")}
    header.update(
        runId=header.get("runId") or (submissions[0]["runId"] if submissions else None),
        engine="slurm",
        outdir=str(outdir),
        slurm={"jobIds": [s["jobId"] for s in submissions]},
        state="running" if live else old.get("state", "running"),
    )
    if experiment is not None:
        header["source"] = experiment.source
    summary = records.summarise(header, entries)
    summary["updated"] = records.now_iso()
    records.write_run(outdir, summary)
    return summary


# ----------------------------------------------------------------------------- faice exec


def _succeeded_batches(outdir: Path, batch_ids: Iterable[str]) -> set[str]:
    from faice import records

    return {b for b in batch_ids if (records.read_result(outdir, b) or {}).get("state") == SUCCEEDED}


def _say(message: str) -> None:
    print(REDACTOR.redact(message), file=sys.stderr, flush=True)


def run(experiment, args) -> int:
    """``faice exec`` for ``engine: slurm``: submit one array; with ``--wait`` follow it."""
    settings = SlurmSettings.from_experiment(experiment)
    if getattr(args, "dry_run", False):
        return _dry_run(experiment, settings, args)
    from faice import records

    slurm_cli.require_tools()
    run_id = new_run_id()
    if getattr(args, "outdir", None):
        outdir = Path(args.outdir)
    elif settings.run_dir:
        outdir = Path(settings.run_dir).expanduser() / records.default_outdir(run_id).name
    else:
        outdir = records.default_outdir(run_id)
    outdir = outdir.resolve()
    records.prepare_outdir(outdir, resume=getattr(args, "resume", False))
    only = None
    if getattr(args, "resume", False):
        done = _succeeded_batches(outdir, [b.id for b in experiment.batches])
        only = {b.id for b in experiment.batches if b.id not in done}
        if not only:
            _say(f"faice: all {len(experiment.batches)} batches already succeeded in {outdir}")
            return 0
        _say(f"faice: resuming: {len(done)} batches succeeded before, re-submitting {len(only)}")
    job = submit_batches(experiment, _run_options(args), outdir, only, run_id=run_id, max_running=getattr(args, "parallel", None))
    _say(f"faice: submitted Slurm job array {job.job_id} ({len(job.batch_ids)} batches); run directory {outdir}")
    if not getattr(args, "wait", False):
        if getattr(args, "json", False):
            print(json.dumps(rundir.read_json(outdir / "run.json"), indent=2))
        else:
            _say(f"faice: follow it with: faice status --outdir {shlex.quote(str(outdir))} --wait")
        return 0
    return follow(job, args)


def _run_options(args) -> Any:
    """The local engine's RunOptions when available (tasks rebuild them), else the flags."""
    try:
        from faice.engines.local import RunOptions
    except ImportError:
        RunOptions = None
    if RunOptions is not None and hasattr(RunOptions, "from_args"):
        return RunOptions.from_args(args)
    keys = ("disable_pull", "leave_container", "preserve_environment", "insecure", "timeout", "retries",
            "disable_connector_validation", "fail_fast", "max_failures", "debug")
    return {k: getattr(args, k) for k in keys if hasattr(args, k)}


def follow(job: SlurmJob, args) -> int:
    """Follow the array until every batch is final; Ctrl-C or SIGTERM cancels it (nothing is
    left running behind the user's back) and exits 130 or 143 like a local run."""
    from faice.engines.slurm_progress import Follower

    follower = Follower(job.outdir, job.batch_index, live=False if getattr(args, "no_progress", False) else None)
    received: list[int] = []
    with follower, _interrupts(received):
        try:
            states = job.wait(follower.update)
        except KeyboardInterrupt:
            if not received:
                received.append(signal.SIGINT)
            follower.note(f"interrupted: cancelling Slurm job array {job.job_id}")
            job.cancel()
            states = job.wait(follower.update)
    summary = write_run_summary(job.outdir, states=states)
    if getattr(args, "json", False):
        print(REDACTOR.redact(json.dumps(summary, indent=2)))
    follower.report(summary)
    if received:
        return EXIT_SIGNAL.get(received[0], 130)
    return 0 if summary["state"] == SUCCEEDED else 1


def _interrupts(received: list[int]):
    """SIGINT and SIGTERM interrupt the wait once; while the array is being cancelled further
    signals are noted and ignored, so the cancellation itself cannot be cut short."""

    def on_signal(signum, _frame) -> None:
        if not received:
            received.append(signum)
            raise KeyboardInterrupt

    return interrupts_to(on_signal)


def _dry_run(experiment, settings: SlurmSettings, args) -> int:
    """Print the sbatch command and the batches; submit nothing."""
    outdir = Path(args.outdir).resolve() if getattr(args, "outdir", None) else Path("faice-runs/<time>-<run id>")
    argv = sbatch_options(
        settings,
        experiment.container_settings,
        job_name="faice-<run id>",
        array=slurm_cli.array_spec(len(experiment.batches), getattr(args, "parallel", None) or settings.max_running),
        output=rundir.log_pattern(outdir),
        workdir=str(outdir),
    )
    plan = {
        "engine": "slurm",
        "sbatch": ["sbatch", *argv, str(outdir / "slurm" / "1" / "job.sh")],
        "taskCommand": [settings.python, "-m", "faice.engines.slurm_task", str(outdir / "slurm" / "1"), "$SLURM_ARRAY_TASK_ID"],
        "batches": [{"task": i, "id": b.id, "index": b.index, "parameters": b.parameters} for i, b in enumerate(experiment.batches)],
    }
    if getattr(args, "json", False):
        print(REDACTOR.redact(json.dumps(plan, indent=2)))
    else:
        lines = ["Slurm plan (nothing submitted):", "  " + shlex.join(plan["sbatch"])]
        lines += [f"  task {e['task']}: batch {e['id']} {json.dumps(e['parameters'])}" for e in plan["batches"]]
        print(REDACTOR.redact("\n".join(lines)))
    return 0



# ----------------------------------------------------------------------------- status / cancel


def slurm_run_command(name: str, args) -> int | None:
    """``faice status|cancel --outdir DIR`` for a Slurm run (called by :mod:`faice.engines.follow`).

    ``status`` asks Slurm for the live state and rewrites run.json (following the array until
    every batch is final with ``--wait``), then returns None so the caller prints run.json as
    for any run directory. ``cancel ID`` cancels the batch ``ID``, or every unfinished batch
    when ``ID`` is the run id (or ``all``), and returns the exit code."""
    outdir = Path(args.outdir).resolve()
    if name == "status":
        if getattr(args, "wait", False):
            jobs = open_run(outdir)
            from faice.engines.slurm_progress import Follower

            index = {b: i for job in jobs for b, i in job.batch_index.items()}
            wait_run(jobs, Follower(outdir, index, live=False).update)
        refresh_run(outdir)
        return None
    if name == "cancel":
        run = refresh_run(outdir)
        target = getattr(args, "id", None)
        batch_id = None if target in (None, "all", run.get("runId")) else target
        cancelled = cancel_run(outdir, batch_id)
        if cancelled:
            wait_run(open_run(outdir))
        refresh_run(outdir)
        if cancelled:
            _say(f"faice: cancelled {len(cancelled)} batch{'es' if len(cancelled) != 1 else ''}: {', '.join(cancelled)}")
        else:
            _say("faice: nothing to cancel: every batch is final")
        return 0
    return None

