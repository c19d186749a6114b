"""The Slurm part of a run directory: what the submitting host and the tasks on the nodes share.

The run directory must be on a filesystem that the login node and every compute node see
under the same path. Besides the usual layout (``run.json``, ``batches/<id>/``) a Slurm run
keeps::

    slurm/                      mode 0700
      submissions.json          one entry per sbatch call: job id, run id, batch id per task id
      <tag>/job.sh              the batch script of that job array
      <tag>/options.json        the run options every task uses (no secrets)
      <tag>/tasks/<task>.json   mode 0600: the filled batch (it may hold secrets); the task
                                deletes it as soon as it has read it, faice deletes the specs
                                of tasks that never started when the array is final or cancelled
      logs/slurm-<job>_<task>.out   what the task printed (Slurm's --output)

A packed submission (``workers: K``) has K worker tasks instead of one task per batch; its
specs are kept until their batch is final (a batch may be re-run by another worker), and::

      <tag>/pack.json           workers, batchesPerWorker, leaseSeconds, pollInterval, runtime
      <tag>/queue/              the claim queue (faice.engines.slurm.claims)
      <tag>/work/<task>.<gen>/  a claimed batch's directory until its worker commits it
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from faice.errors import UsageError
from faice.files import atomic_write_json, read_json, tail_text
from faice.pipeline.records import BatchState, FailureClass, new_batch_record
from faice.pipeline.rundir import RunDir, is_batch_id
from faice.secrets import REDACTOR

SLURM_DIR = "slurm"
SUBMISSIONS = "submissions.json"
LOGS = "logs"
PACK_FILE = "pack.json"  # a packed submission's worker settings


def slurm_dir(outdir: Path) -> Path:
    return outdir / SLURM_DIR


def is_slurm_run(outdir: Path) -> bool:
    return (slurm_dir(outdir) / SUBMISSIONS).is_file()


def write_json(path: Path, data: Any, *, mode: int = 0o644) -> None:
    """Write JSON atomically and redacted, so a reader on another node never sees half a file."""
    atomic_write_json(path, data, mode=mode, redact=REDACTOR.redact)


# What every submissions.json entry holds, as faice wrote it (sbatch's job ids are digits).
_SUBMISSION_KEYS: tuple[tuple[str, str, Callable[[Any], bool]], ...] = (
    ("jobId", "a Slurm job id (digits)", lambda v: isinstance(v, str) and v.isdigit()),
    ("tag", "a plain directory name", lambda v: isinstance(v, str) and is_batch_id(v)),
    ("runId", "a string", lambda v: isinstance(v, str)),
    ("batchIds", "a list of batch ids", lambda v: isinstance(v, list) and all(isinstance(b, str) and is_batch_id(b)
                                                                             for b in v)),
)


def read_submissions(outdir: Path) -> list[dict[str, Any]]:
    """The entries of ``submissions.json``; UsageError for one faice did not write: its job id
    goes to scancel and squeue (``--me`` would be an option) and its tag names a directory
    whose task specs are deleted (``../..`` would lead out of the run)."""
    path = slurm_dir(outdir) / SUBMISSIONS
    data = read_json(path, beneath=Path(outdir))
    if not isinstance(data, list):
        return []
    for number, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise UsageError(f"{path}: [{number}]: expected an object, got {type(entry).__name__}")
        for key, expected, valid in _SUBMISSION_KEYS:
            if not valid(entry.get(key)):
                raise UsageError(f"{path}: [{number}].{key}: expected {expected}, got {entry.get(key)!r:.80}")
    return data


def read_stored(path: Path) -> dict[str, Any]:
    """A file faice wrote for its tasks (options, pack settings, a spec); one that is missing
    or broken is an error of the task, not an empty file."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def new_submission_dir(outdir: Path) -> tuple[str, Path]:
    """A fresh ``slurm/<tag>/`` (tags count up: 1, 2, … one per ``--resume``)."""
    base = slurm_dir(outdir)
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o700)
    (base / LOGS).mkdir(exist_ok=True)
    number = len(read_submissions(outdir)) + 1
    while (base / str(number)).exists():
        number += 1
    path = base / str(number)
    (path / "tasks").mkdir(parents=True)
    os.chmod(path / "tasks", 0o700)
    return str(number), path


def add_submission(outdir: Path, entry: dict[str, Any]) -> None:
    entries = read_submissions(outdir)
    entries.append(entry)
    write_json(slurm_dir(outdir) / SUBMISSIONS, entries)


def update_submission(outdir: Path, tag: str, fields: dict[str, Any]) -> None:
    """Set ``fields`` of the submission ``tag`` (one writer: the process that submitted it)."""
    entries = read_submissions(outdir)
    for entry in entries:
        if entry.get("tag") == tag:
            entry.update(fields)
    write_json(slurm_dir(outdir) / SUBMISSIONS, entries)


OPEN_SPEC = -1  # tasks/-1.json: the shared part of the specs an open queue's batches get


def task_spec_path(submission: Path, task_id: int) -> Path:
    return submission / "tasks" / f"{task_id}.json"


def write_task_spec(submission: Path, task_id: int, spec: dict[str, Any]) -> None:
    """Write a task's spec readable by its owner only (it may hold filled secrets), unredacted."""
    path = task_spec_path(submission, task_id)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(spec, handle)


def take_task_spec(submission: Path, task_id: int) -> dict[str, Any]:
    """Read a task's spec and delete it at once, so secrets rest on disk only while queued."""
    path = task_spec_path(submission, task_id)
    try:
        return read_stored(path)
    finally:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def remove_task_specs(submission: Path, task_ids: list[int] | None = None) -> None:
    tasks = submission / "tasks"
    if not tasks.is_dir():
        return
    for path in tasks.glob("*.json"):
        if task_ids is None or (path.stem.isdigit() and int(path.stem) in task_ids):
            path.unlink(missing_ok=True)


def log_path(outdir: Path, job_id: str, task_id: int) -> Path:
    return slurm_dir(outdir) / LOGS / f"slurm-{job_id}_{task_id}.out"


def log_pattern(outdir: Path) -> str:
    return str(slurm_dir(outdir) / LOGS / "slurm-%A_%a.out")


def tail(path: Path, limit: int = 4000) -> str:
    """The last ``limit`` bytes of a task's output in whole lines, redacted."""
    return REDACTOR.redact(tail_text(path, limit))


# A batch that Slurm reports final gets this long for its record to appear (shared file
# systems cache directory entries) before faice writes a failure record in its place.
RECORD_GRACE_S = 5.0


class Submission:
    """One ``sbatch`` of a run, as ``submissions.json`` records it: the job, its batches and
    where its files are. :class:`~faice.engines.slurm.job.SlurmJob` (a task per batch) and
    :class:`~faice.engines.slurm.packed.PackedJob` (workers pulling batches) follow one each."""

    def __init__(self, outdir: Path, entry: dict[str, Any]):
        self.outdir = outdir
        self.rundir = RunDir(outdir)
        self.job_id: str = entry["jobId"]
        self.tag: str = entry["tag"]
        self.run_id: str = entry["runId"]
        self.batch_ids: list[str] = list(entry["batchIds"])
        self.batch_index: dict[str, int] = dict(entry.get("batchIndex") or {})
        self.batch_parameters: dict[str, Any] = dict(entry.get("batchParameters") or {})

    @property
    def submission_dir(self) -> Path:
        return slurm_dir(self.outdir) / self.tag

    def remove_specs(self) -> None:
        """Delete the secret-bearing specs of tasks that never started."""
        remove_task_specs(self.submission_dir)

    def record_lost(self, batch_id: str, failure: FailureClass, message: str, *,
                    engine: dict[str, Any], logs: str = "", logs_title: str = "task output") -> BatchState:
        """The one builder of the record of a batch whose task or worker never wrote one:
        the reason, and what Slurm's log of it shows (also its stderr.txt, if it has none)."""
        record = new_batch_record(
            batch_id, self.batch_index.get(batch_id), self.batch_parameters.get(batch_id), run_id=self.run_id,
            command=None, failure_class=failure, message=message, engine={"name": "slurm", "jobId": self.job_id, **engine},
        )
        if logs:
            assert record.debug_info is not None
            record.debug_info.append(f"{logs_title}:\n{logs}")
            self.rundir.write_stream(batch_id, "stderr", logs, keep=True)
        self.rundir.write_record(record)
        return record.state
