"""The Slurm command-line layer: ``sbatch``, ``squeue``, ``scontrol`` and ``scancel``.

Slurm's Python bindings track one Slurm release each (pyslurm does not match 22.05), while the
command-line tools are stable across releases and present on every login node, so faice drives
the CLI. ``sbatch --wait`` polls at growing intervals and adds seconds per job; faice polls
``squeue``/``scontrol`` itself instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from faice.errors import EngineError

# Slurm job states (``squeue -o %T`` / ``scontrol JobState``), grouped by what they mean to faice.
PENDING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "CONFIGURING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING", "SPECIAL_EXIT"})
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT"})
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED"})

COMMAND_TIMEOUT_S = 60


@dataclass(frozen=True)
class TaskState:
    """What Slurm knows about one array task."""

    task_id: int
    state: str  # a Slurm job state, e.g. PENDING, RUNNING, COMPLETED, FAILED, CANCELLED
    reason: str = ""
    exit_code: int | None = None  # the batch script's exit status, when final
    signal: int | None = None

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def is_running(self) -> bool:
        return self.state in RUNNING_STATES


def require_tools() -> None:
    """Fail early, before anything is written, where the Slurm client tools are missing."""
    for tool in ("sbatch", "squeue", "scontrol", "scancel"):
        if shutil.which(tool) is None:
            raise EngineError(
                f"Slurm engine: {tool} not found on PATH",
                hint="run faice on a Slurm login node (sbatch, squeue, scontrol and scancel are needed)",
            )


def _run(argv: Sequence[str], *, what: str) -> str:
    """Run a Slurm command and return its stdout, turning every failure into an EngineError."""
    if shutil.which(argv[0]) is None:
        require_tools()
    try:
        completed = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise EngineError(f"Slurm engine: {what}: {argv[0]} did not answer within {COMMAND_TIMEOUT_S} s") from None
    except OSError as exc:
        raise EngineError(f"Slurm engine: {what}: cannot run {argv[0]}: {exc.strerror}") from None
    if completed.returncode != 0:
        message = (completed.stderr or completed.stdout).strip() or f"exit code {completed.returncode}"
        raise EngineError(f"Slurm engine: {what} failed: {message}")
    return completed.stdout


def array_spec(count: int, limit: int | None = None) -> str:
    """``0-3`` or ``0-3%2``: ``count`` tasks, at most ``limit`` of them running at a time."""
    if count < 1:
        raise ValueError("an array needs at least one task")
    spec = "0" if count == 1 else f"0-{count - 1}"
    return f"{spec}%{limit}" if limit else spec


def sbatch(script: str, options: Sequence[str], *, cwd: str | None = None) -> str:
    """Submit ``script`` with sbatch ``options`` and return the job id."""
    out = _run(["sbatch", "--parsable", *options, script], what="job submission (sbatch)")
    # --parsable prints "jobid" or "jobid;cluster".
    job_id = out.strip().splitlines()[-1].split(";")[0] if out.strip() else ""
    if not job_id.isdigit():
        raise EngineError(f"Slurm engine: sbatch printed no job id (got {out.strip()!r})")
    return job_id


def parse_task_ids(text: str) -> list[int]:
    """``3`` → [3]; ``0-3`` → [0..3]; ``[0-2,5]%2`` / ``0,4-5`` → the listed ids."""
    text = text.split("%", 1)[0].strip().strip("[]")
    ids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            low, high = part.split("-", 1)
            if low.isdigit() and high.isdigit():
                ids.extend(range(int(low), int(high) + 1))
        elif part.isdigit():
            ids.append(int(part))
    return ids


def queued_tasks(job_id: str) -> dict[int, TaskState]:
    """Array tasks of ``job_id`` that squeue still lists (pending or running), by task id."""
    return queued_tasks_of([job_id]).get(job_id, {})


def queued_tasks_of(job_ids: Sequence[str]) -> dict[str, dict[int, TaskState]]:
    """The array tasks squeue still lists for each of ``job_ids``: ONE squeue call for all
    of them (:class:`faice.engines.slurm.watcher.SlurmView` asks it once per poll round)."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    what = f"querying job{'s' if len(ids) > 1 else ''} {','.join(ids)} (squeue)"
    out = _query_job(["squeue", "-h", "-r", "-j", ",".join(ids), "-o", "%F|%K|%T|%r"], what)
    jobs: dict[str, dict[int, TaskState]] = {job_id: {} for job_id in ids}
    for line in out.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 3 or fields[0] not in jobs:
            continue
        for task_id in parse_task_ids(fields[1]):
            jobs[fields[0]][task_id] = TaskState(task_id, fields[2], fields[3] if len(fields) > 3 else "")
    return jobs


_FIELD = re.compile(r"(\w+)=(\S*)")


def _query_job(argv: list[str], what: str) -> str:
    """A query's output; "" when Slurm has forgotten the job id (nothing queued or remembered)."""
    try:
        return _run(argv, what=what)
    except EngineError as exc:
        if "Invalid job id" in exc.message:
            return ""
        raise


def job_records(job_id: str) -> dict[int, TaskState]:
    """Every array task slurmctld still remembers (finished ones for ``MinJobAge``), with exit codes."""
    out = _query_job(["scontrol", "-o", "show", "job", job_id], f"querying job {job_id} (scontrol)")
    tasks: dict[int, TaskState] = {}
    for line in out.splitlines():
        fields = dict(_FIELD.findall(line))
        if "JobState" not in fields:
            continue
        exit_code = signal = None
        if ":" in fields.get("ExitCode", ""):
            code, sig = fields["ExitCode"].split(":", 1)
            exit_code, signal = (int(code), int(sig)) if code.isdigit() and sig.isdigit() else (None, None)
        ids = parse_task_ids(fields.get("ArrayTaskId", "")) or [0]
        for task_id in ids:
            tasks[task_id] = TaskState(task_id, fields["JobState"], fields.get("Reason", ""), exit_code, signal)
    return tasks


def task_states(job_id: str) -> dict[int, TaskState]:
    """The state of every array task: the queue for live ones, scontrol for finished ones."""
    states = job_records(job_id)
    states.update({k: v for k, v in queued_tasks(job_id).items() if not states.get(k, v).is_final})
    return states


def scancel(job_id: str, task_ids: Sequence[int] | None = None, *, signal: str | None = None) -> None:
    """Cancel the whole array, or only some of its tasks."""
    target = job_id if task_ids is None else f"{job_id}_[{','.join(str(t) for t in sorted(task_ids))}]"
    argv = ["scancel"]
    if signal:
        argv += ["--signal", signal]
    try:
        _run([*argv, target], what=f"cancelling job {target} (scancel)")
    except EngineError as exc:
        # A task that ended in the meantime needs no cancelling.
        if "already completing or completed" not in exc.message and "Invalid job id" not in exc.message:
            raise



def test_submission(options: Sequence[str]) -> str | None:
    """``sbatch --test-only``: Slurm's objection to these options (partition, account, QOS,
    time limit), or None when it would accept them; nothing is queued."""
    try:
        probe = subprocess.run(
            ["sbatch", "--test-only", *options, "--wrap=true"], capture_output=True, text=True,
            timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sbatch --test-only did not answer: {exc}"
    if probe.returncode != 0:
        message = " ".join(line.strip() for line in (probe.stderr or probe.stdout).splitlines() if line.strip())
        return message or f"sbatch --test-only: exit code {probe.returncode}"
    return None
