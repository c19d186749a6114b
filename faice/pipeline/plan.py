"""From a loaded experiment to batch plans, and the checks made before anything runs.

A :class:`BatchPlan` is everything one batch needs that does not depend on where it runs:
its command line (built by cwltool's rules), the inputs to stage, the outputs to send, the
image, RAM and GPU request. Every engine runs plans; ``faice exec --dry-run`` prints them;
``faice validate --check-access`` and the run-level preflight share :func:`probe_access`.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faice.cwl.commandline import OUTPUTS_DIR, BatchCommand, StagedInput
from faice.errors import EngineError, FaiceError, KeyPath, format_key_path
from faice.pipeline.rundir import BatchDir, RunDir
from faice.red.experiment import Batch, Experiment
from faice.runtime.containers import check_image_ref
from faice.runtime.gpus import Gpu, GpuAllocator, GpuRequest
from faice.runtime.select import DEFAULT_RUNTIME

if TYPE_CHECKING:
    from faice.connectors.staging import ConnectorRequest, StagingSession
    from faice.red.metrics import MetricsSpec


@dataclass
class BatchPlan:
    """One batch, ready to run anywhere."""

    batch: Batch
    command: BatchCommand
    source: str  # the RED file, for messages
    image_ref: str
    image_auth: dict[str, Any] | None
    ram_mb: int | None
    gpu_request: GpuRequest
    output_kinds: dict[str, str]  # output key → "File" | "Directory"
    metrics: MetricsSpec | None = None  # the RED file's ``metrics`` section, when it has one
    engine: str = DEFAULT_RUNTIME  # container.engine: the runtime (RunOptions.runtime_for may override it)

    @property
    def id(self) -> str:
        return self.batch.id

    @property
    def index(self) -> int:
        return self.batch.index

    def output_connectors(self) -> dict[str, dict[str, Any]]:
        """The outputs that are sent somewhere (the others stay in ``outputs/``)."""
        return {k: v for k, v in (self.batch.outputs or {}).items() if isinstance(v, dict) and v.get("connector")}


def metrics_spec(experiment: Experiment) -> MetricsSpec | None:
    """The ``metrics`` section (imported only when there is one: a run without metrics pays nothing)."""
    if "metrics" not in experiment.data:
        return None
    from faice.red.metrics import MetricsSpec

    return MetricsSpec.from_red(experiment.data, experiment.source)


def plan_batches(experiment: Experiment, batches: list[Batch] | None = None) -> list[BatchPlan]:
    """Plans for ``batches`` (default: every batch of the experiment); the tool is loaded once."""
    from faice.cwl.commandline import CommandBuilder

    settings = experiment.container_settings
    image = settings.get("image") or {}
    image_ref = str(image.get("url") or "")
    if not image_ref:
        raise EngineError(f"{experiment.source}: container.settings.image.url: missing")
    bad_ref = check_image_ref(image_ref)
    if bad_ref:
        raise EngineError(f"{experiment.source}: container.settings.image.url: {bad_ref}")
    builder = CommandBuilder(experiment.cli, experiment.source)
    gpu_request = GpuRequest.from_settings(settings.get("gpus"))
    kinds = {key: "Directory" if str((spec or {}).get("type", "File")).startswith("Directory") else "File"
             for key, spec in (experiment.cli.get("outputs") or {}).items()}
    metrics = metrics_spec(experiment)
    return [
        BatchPlan(
            batch=batch,
            command=builder.build(batch.inputs, label=f"batches[{batch.index}].inputs"),
            source=experiment.source,
            image_ref=image_ref,
            image_auth=image.get("auth"),
            ram_mb=int(settings["ram"]) if settings.get("ram") else None,
            gpu_request=gpu_request,
            output_kinds=kinds,
            metrics=metrics,
            engine=str(experiment.container.get("engine") or DEFAULT_RUNTIME),
        )
        for batch in (experiment.batches if batches is None else batches)
    ]


# ----------------------------------------------------------------------------- connectors


def connector_request(label: str, value: dict[str, Any]) -> ConnectorRequest:
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


@dataclass
class ConnectorUse:
    """One place in the RED file that moves data through a connector."""

    batch: Batch
    path: KeyPath  # (section, key[, item]) below the batch
    value: dict[str, Any]
    operation: str  # receive-file, receive-dir, mount-dir, send-file, send-dir

    def key_path(self, *, with_batch: bool = True) -> KeyPath:
        return (("batches", self.batch.index) if with_batch else ()) + self.path

    def request(self, *, with_batch: bool = True) -> ConnectorRequest:
        return connector_request(format_key_path(self.key_path(with_batch=with_batch)), self.value)

    def probe_key(self) -> str:
        """Uses with the same operation and connector are probed once."""
        return json.dumps([self.operation, self.value.get("connector")], sort_keys=True, default=str)


def connector_uses(batches: list[Batch], output_kinds: dict[str, str]) -> list[ConnectorUse]:
    """Every input and output of ``batches`` that names a connector, in file order."""
    from faice.connectors.places import connector_places

    types: dict[str, dict[str, Any]] = {"inputs": {}, "outputs": dict(output_kinds)}
    return [ConnectorUse(batch, place.path, place.item, place.operation)
            for batch in batches
            for place in connector_places({"inputs": batch.inputs, "outputs": batch.outputs}, types)]


def probe_access(uses: list[ConnectorUse], session: StagingSession, *, with_batch: bool = True
                 ) -> list[tuple[ConnectorUse, str]]:
    """Probe every distinct connector access once, concurrently; (use, message) per failure,
    for every use that shares a failed probe."""
    probes: dict[str, ConnectorUse] = {}
    for use in uses:
        probes.setdefault(use.probe_key(), use)
    if not probes:
        return []

    def probe(use: ConnectorUse) -> str | None:
        try:
            session.validate(use.request(with_batch=with_batch), use.operation)
        except FaiceError as exc:
            return exc.message
        return None

    with ThreadPoolExecutor(max_workers=min(8, len(probes))) as pool:
        failed = dict(zip(probes, pool.map(probe, probes.values()), strict=True))
    results = []
    for use in uses:
        message = failed.get(use.probe_key())
        if message is not None:
            first = probes[use.probe_key()]
            own = format_key_path(use.key_path(with_batch=with_batch))
            other = format_key_path(first.key_path(with_batch=with_batch))
            results.append((use, message.replace(other, own, 1)))
    return results


def preflight_access(plans: list[BatchPlan], session: StagingSession) -> None:
    """Before any container starts: every connector access of the run must work."""
    if not plans:
        return
    failures = probe_access(connector_uses([p.batch for p in plans], plans[0].output_kinds), session)
    first: dict[str, str] = {}
    for use, message in failures:
        first.setdefault(use.probe_key(), message)
    messages = list(first.values())
    if messages:
        raise EngineError("connector access check failed (nothing was run):\n  " + "\n  ".join(messages),
                          hint="--disable-connector-validation skips these checks")


# ----------------------------------------------------------------------------- the plan shown


def default_parallel(count: int, ram_mb: int | None, gpus: GpuAllocator | None, request: GpuRequest) -> int:
    """Batches at a time when ``--parallel`` is not given.

    Containers spend much of their start-up waiting on dockerd, so small hosts still gain
    from 4 at a time; RAM and GPUs bound it where batches declare them."""
    limits = [count, max(4, os.cpu_count() or 1)]
    if ram_mb:
        try:
            total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
            limits.append(max(1, int(total_mb * 0.9) // ram_mb))
        except (ValueError, OSError):
            pass
    gpu_limit = gpus.max_concurrent(request) if gpus else None
    if gpu_limit is not None:
        limits.append(gpu_limit)
    return max(1, min(limits))


def describe(plans: list[BatchPlan], *, run_id: str, outdir: Path, parallel: int | None,
             gpus: GpuAllocator, budget: int | None = None, runtime: str | None = None,
             environment: list[str] | None = None) -> dict[str, Any]:
    """What ``--dry-run`` shows: batches, parameters, commands, image, GPU placement, mounts
    and where each output goes; ``budget`` is the sweep's ``maxConcurrent``.

    The GPU plan is shown even where the request cannot be placed (no GPU here, all busy):
    then with a note saying why, not refused: the plan is often read on a laptop before
    running on a GPU machine."""
    first = plans[0] if plans else None
    request = first.gpu_request if first else GpuRequest()
    ram_mb = first.ram_mb if first else None
    note = None
    try:
        gpus.check(request)
    except EngineError as exc:
        note = f"not placeable here: {exc.message}"
    parallel = parallel or default_parallel(len(plans), ram_mb, None if note else gpus, request)
    if budget is not None:
        parallel = min(parallel, budget)  # the sweep's maxConcurrent, as the run applies it
    busy = {g.uuid for g in gpus.busy_devices()} if request.count else set()
    slots: list[list[Gpu]] = []
    if request.count and not note:
        for _ in range(min(parallel, len(plans))):
            placed = gpus.try_acquire(request)
            if not placed:
                break
            slots.append(placed)  # the batches that start at once; later ones reuse freed GPUs
    runtime = runtime or (first.engine if first else DEFAULT_RUNTIME)
    rundir = RunDir(outdir)
    batches = []
    for position, plan in enumerate(plans):
        placed = slots[position % len(slots)] if slots else []
        placed_ids = [g.index for g in placed]
        # As a run names them (UUIDs); not placeable here: placeholder ids.
        asked = [g.uuid or g.index for g in placed] or [f"GPU{i}" for i in range(request.count)]
        argv, runtime_env = runtime_command(runtime, plan, run_id, outdir, asked, environment or [])
        batches.append({
            "runtimeCommand": argv,
            "runtimeEnvironment": runtime_env,
            "id": plan.id,
            "index": plan.index,
            "parameters": plan.batch.parameters,
            "command": plan.command.argv,
            "gpus": placed_ids,
            "mounts": [_mount(s) for s in plan.command.staged] + [
                {"input": None, "target": OUTPUTS_DIR, "mode": "rw", "source": str(rundir.batch(plan.id).outputs)}],
            "outputs": _destinations(plan, rundir.batch(plan.id)),
        })
    devices = []
    for gpu in gpus.gpus if request.count else []:
        first_wave = [plans[i].id for i, slot in enumerate(slots) if gpu in slot]
        reserved = sum(gpus.reserved(slot)[slot.index(gpu)] for slot in slots if gpu in slot)
        devices.append({**gpu.describe(), "busy": gpu.uuid in busy, "batches": first_wave,
                        "reserved": reserved if request.shared else (gpu.vram if first_wave else 0)})
    return {
        "runId": run_id,
        "runtime": runtime,
        "ramNote": ram_note(runtime) if ram_mb else None,
        "image": first.image_ref if first else None,
        "ram": ram_mb,
        "gpusPerBatch": request.count,
        "gpuVramMin": list(request.vram_min) if request.count else [],
        "gpuRequest": {"vram": list(request.vram_min), "shared": request.shared} if request.count else None,
        "gpuDevices": devices,
        "gpuNote": note,
        "parallel": parallel,
        "outdir": str(outdir),
        "batches": batches,
    }


STAGED_PLACEHOLDER = "/faice-staged"  # a staged input's host path is chosen at stage-in


def runtime_command(runtime: str, plan: BatchPlan, run_id: str, outdir: Path, gpu_ids: list[str],
                    environment: list[str]) -> tuple[list[str], dict[str, str]]:
    """The exact command the runtime gets for ``plan`` (Docker: the ``docker run`` its five API
    calls amount to) and the variables faice sets for it (a preserved host variable as
    ``$NAME``); staged inputs' host paths show as ``/faice-staged/<input>``."""
    from faice.runtime.containers import ContainerSpec
    from faice.runtime.select import docker_run_argv, process_runtime

    binds = [(str(RunDir(outdir.resolve()).batch(plan.id).outputs), OUTPUTS_DIR, "rw")]
    for staged in plan.command.staged:
        writable = staged.mount and bool((staged.connector or {}).get("access", {}).get("writable"))
        binds.append((f"{STAGED_PLACEHOLDER}/{staged.key.replace(':', '-')}", staged.container_path,
                      "rw" if writable else "ro"))
    env = {name: f"${name}" for name in environment}
    if gpu_ids:
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(gpu_ids)))
    spec = ContainerSpec(image=plan.image_ref, command=plan.command.argv, run_id=run_id, batch_id=plan.id,
                         binds=binds, environment=env, ram_mb=plan.ram_mb, gpu_ids=gpu_ids,
                         name=f"faice-{plan.id}")
    if runtime == "docker":
        return docker_run_argv(spec), dict(env)
    process = process_runtime(runtime)
    spec.image = process.image_path(plan.image_ref)
    command = process.describe(spec)
    return command.argv, {k: v for k, v in command.env.items() if os.environ.get(k) != v}


def ram_note(runtime: str) -> str | None:
    """Where ``ram`` is not enforced by this runtime on this host (said before anything runs)."""
    if runtime == "docker":
        return None
    from faice.runtime.select import process_runtime

    return process_runtime(runtime).memory_note()


def _mount(staged: StagedInput) -> dict[str, Any]:
    writable = staged.mount and bool((staged.connector or {}).get("access", {}).get("writable"))
    return {"input": staged.key, "target": staged.container_path, "mode": "rw" if writable else "ro",
            "connector": (staged.connector or {}).get("command"), "hostMount": staged.mount}


# Access keys that say where data goes (never credentials).
_WHERE_KEYS = ("url", "host", "port", "bucket", "key", "filePath", "dirPath", "path")


def _destinations(plan: BatchPlan, files: BatchDir) -> dict[str, str]:
    """Output key → where it ends up: a connector and its target, or a path in the run dir."""
    sent = plan.output_connectors()
    where: dict[str, str] = {}
    for key, glob in plan.command.globs.items():
        kind = str(plan.command.output_types.get(key))
        local = files.stream(kind) if not glob and kind in ("stdout", "stderr") else files.outputs / glob
        connector = (sent.get(key) or {}).get("connector")
        if isinstance(connector, dict):
            raw = connector.get("access")
            access: dict[str, Any] = raw if isinstance(raw, dict) else {}
            target = ", ".join(f"{k}={access[k]}" for k in _WHERE_KEYS
                               if isinstance(access.get(k), str | int) and not isinstance(access.get(k), bool))
            where[key] = f"{connector.get('command')} connector: {target or '(no target)'} (kept in {local})"
        else:
            where[key] = str(local)
    return where
