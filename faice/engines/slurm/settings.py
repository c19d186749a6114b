"""``execution.settings`` of the ``slurm`` engine and the sbatch options they become.

Settings (all optional)::

    execution:
      engine: slurm
      settings:
        partition: gpu            # --partition
        account: my-project       # --account
        qos: normal               # --qos
        time: "02:00:00"          # --time, per batch
        cpusPerTask: 4            # --cpus-per-task
        batchConcurrencyLimit: 8  # at most this many batches at a time (--array=...%8)
        runDir: /shared/faice-runs      # default parent of run directories (shared by all nodes)
        python: /opt/faice/bin/python   # the Python with faice installed on the nodes
        extraArgs: ["--constraint=a100"]  # appended to sbatch's options as given
        workers: 2                # packing: ONE array of 2 worker allocations that pull batches
        batchesPerWorker: 1       # batches a worker runs at once (its allocation is sized for them)
        leaseSeconds: 60          # a claimed batch whose worker is silent this long is re-queued
        pollInterval: 10          # seconds between two squeue calls while following a packed run

Memory and GPUs come from the batch's container request: ``container.settings.ram`` (MB)
becomes ``--mem=<ram>M`` and ``container.settings.gpus`` (``count``, or one GPU per
``devices`` item) becomes ``--gres=gpu:N`` (``vramMin`` cannot be expressed as a generic
resource: select such nodes with ``extraArgs``, e.g. ``--gres=gpu:a100:1`` or ``--constraint``).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any

from faice.errors import Problem, ValidationError

SETTINGS_PATH = ("execution", "settings")
# Packing: an array larger than Slurm's usual MaxArraySize, or allocations for more batches
# than a node could hold, is a typo (or hostile), not a plan.
UPPER_BOUNDS = {"workers": 10000, "batchesPerWorker": 256}

# What each value may contain. They become sbatch options (argument lists, never a shell), but
# a value starting with "-", holding a newline or naming another option would still change
# what sbatch does, and a RED file may come from someone else (the agency's Slurm runner).
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+:-]{0,127}")
_NAMES = re.compile(rf"{_NAME.pattern}(,{_NAME.pattern})*")  # partitions: a comma-separated list
_TIME = re.compile(r"\d{1,9}(:\d{1,2}){0,2}|\d{1,5}-\d{1,2}(:\d{1,2}){0,2}|UNLIMITED|INFINITE|unlimited|infinite")
_EXTRA_ARG = re.compile(r"--[A-Za-z][A-Za-z0-9-]*(=[^\x00-\x1f\x7f]*)?")
_PYTHON = re.compile(r"/[^\x00-\x1f\x7f]*|[A-Za-z0-9_][A-Za-z0-9_.+-]*")
# Options faice sets itself: the job's own files, array and name must stay faice's.
RESERVED_OPTIONS = frozenset({
    "--job-name", "--array", "--output", "--error", "--input", "--chdir", "--requeue", "--no-requeue",
    "--parsable", "--wrap", "--export-file", "--open-mode",
})
PATTERNS = {
    "partition": (_NAMES, "a partition name or a comma-separated list of names (letters, digits, _ . + : -)"),
    "account": (_NAME, "an account name (letters, digits, _ . + : -)"),
    "qos": (_NAME, "a QOS name (letters, digits, _ . + : -)"),
    "time": (_TIME, 'a Slurm time limit such as "90", "02:00:00" or "1-12:00:00"'),
    "python": (_PYTHON, "an absolute path (/opt/faice/bin/python) or a program name on PATH (python3)"),
}


def check_extra_arg(value: str) -> str | None:
    """Why ``value`` is not a safe sbatch option (None: it is one)."""
    if not _EXTRA_ARG.fullmatch(value):
        return ("expected one long option --name or --name=value without control characters "
                f"(newlines included), got {value!r}")
    if value.split("=", 1)[0] in RESERVED_OPTIONS:
        return f"{value.split('=', 1)[0]} is set by faice itself and cannot be given in extraArgs"
    return None


@dataclass(frozen=True)
class SlurmSettings:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    cpus_per_task: int | None = None
    max_running: int | None = None
    run_dir: str | None = None
    python: str = field(default_factory=lambda: sys.executable)
    extra_args: tuple[str, ...] = ()
    workers: int | None = None
    batches_per_worker: int = 1
    lease_seconds: float = 60.0
    poll_interval: float = 10.0

    @property
    def packed(self) -> bool:
        return self.workers is not None

    @classmethod
    def from_experiment(cls, experiment) -> SlurmSettings:
        """The settings of ``execution.settings``; every problem is reported with its key path."""
        return cls.from_mapping(experiment.execution.get("settings") or {}, experiment.source)

    @classmethod
    def from_mapping(cls, settings: Any, source: str) -> SlurmSettings:
        """Read and check Slurm settings from ``source`` (a RED file, the server's flags)."""
        problems: list[Problem] = []

        def problem(key: str, message: str) -> None:
            problems.append(Problem(source, (*SETTINGS_PATH, key), message))

        if not isinstance(settings, dict):
            raise ValidationError([Problem(source, SETTINGS_PATH, "expected a mapping of Slurm settings")])
        known = {"partition", "account", "qos", "time", "cpusPerTask", "batchConcurrencyLimit", "runDir", "python", "extraArgs",
                 "workers", "batchesPerWorker", "leaseSeconds", "pollInterval"}
        for key in settings:
            if key not in known:
                problem(str(key), f"unknown Slurm setting; expected one of {', '.join(sorted(known))}")
        values: dict[str, Any] = {}
        for key, attr in (("partition", "partition"), ("account", "account"), ("qos", "qos"), ("time", "time"), ("python", "python"), ("runDir", "run_dir")):
            value = settings.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
                problem(key, "expected a non-empty string")
            elif key in PATTERNS and not PATTERNS[key][0].fullmatch(str(value)):
                problem(key, f"expected {PATTERNS[key][1]}, got {str(value)[:200]!r}")
            elif key == "runDir" and any(ord(c) < 32 or c == "\x7f" for c in str(value)):
                problem(key, "expected a directory path without control characters")
            else:
                values[attr] = str(value)
        for key, attr in (("cpusPerTask", "cpus_per_task"), ("batchConcurrencyLimit", "max_running"),
                          ("workers", "workers"), ("batchesPerWorker", "batches_per_worker")):
            value = settings.get(key)
            if value is None:
                continue
            high = UPPER_BOUNDS.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (high and value > high):
                problem(key, f"expected an integer between 1 and {high}" if high else "expected an integer >= 1")
            else:
                values[attr] = value
        for key, attr, low in (("leaseSeconds", "lease_seconds", 5.0), ("pollInterval", "poll_interval", 0.1)):
            value = settings.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= 86400:
                problem(key, f"expected a number of seconds between {low:g} and 86400")
            else:
                values[attr] = float(value)
        if "batchesPerWorker" in settings and "workers" not in settings:
            problem("batchesPerWorker", "only applies to packed runs: set workers too")
        extra = settings.get("extraArgs", [])
        if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
            problem("extraArgs", 'expected a list of strings, e.g. ["--constraint=a100"]')
        else:
            for index, arg in enumerate(extra):
                reason = check_extra_arg(arg)
                if reason:
                    problems.append(Problem(source, (*SETTINGS_PATH, "extraArgs", index), reason))
            values["extra_args"] = tuple(extra)
        if problems:
            raise ValidationError(problems)
        return cls(**values)


def gpu_count(container_settings: dict[str, Any]) -> int:
    """How many GPUs one batch asks for (``count``, or one per ``devices`` item)."""
    gpus = container_settings.get("gpus") or {}
    if not isinstance(gpus, dict):
        return 0
    if isinstance(gpus.get("count"), int):
        return max(0, gpus["count"])
    devices = gpus.get("devices")
    return len(devices) if isinstance(devices, list) else 0


def sbatch_options(
    settings: SlurmSettings,
    container_settings: dict[str, Any],
    *,
    job_name: str,
    array: str,
    output: str,
    workdir: str,
    batches_per_task: int = 1,
) -> list[str]:
    """The sbatch options of one job array: every task is one batch with the same resources,
    or (packed) a worker sized for ``batches_per_task`` batches at once."""
    options = [
        f"--job-name={job_name}",
        f"--array={array}",
        f"--output={output}",
        f"--chdir={workdir}",
        # A task deletes its secret-bearing spec when it starts; a requeued task could not run.
        "--no-requeue",
    ]
    for flag, value in (
        ("--partition", settings.partition),
        ("--account", settings.account),
        ("--qos", settings.qos),
        ("--time", settings.time),
        ("--cpus-per-task", settings.cpus_per_task * batches_per_task if settings.cpus_per_task
         else (batches_per_task if batches_per_task > 1 else None)),
    ):
        if value is not None:
            options.append(f"{flag}={value}")
    ram = container_settings.get("ram")
    if isinstance(ram, int) and not isinstance(ram, bool):
        options.append(f"--mem={ram * batches_per_task}M")
    gpus = gpu_count(container_settings)
    if gpus:
        options.append(f"--gres=gpu:{gpus * batches_per_task}")
    options.extend(settings.extra_args)
    return options
