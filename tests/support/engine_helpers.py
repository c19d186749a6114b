"""Building RED files for the engine tests and looking at what Docker holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RUN_LABEL = "org.faice.run"


def sh_red(
    path: Path,
    script: str,
    image: str,
    *,
    sweep: dict[str, Any] | None = None,
    extra_inputs: dict[str, Any] | None = None,
    outputs: dict[str, Any] | None = None,
    ram: int | None = None,
    stdout: str | None = None,
    stderr: str | None = None,
    gpus: dict[str, Any] | None = None,
    job_outputs: dict[str, Any] | None = None,
) -> Path:
    """A RED 9 file whose tool is ``sh -c SCRIPT n`` (the sweep parameter ``n`` is ``$0``)."""
    inputs = {
        "script": {"type": "string", "inputBinding": {"position": 0}},
        "n": {"type": "int", "inputBinding": {"position": 1}},
    }
    inputs.update(extra_inputs or {})
    cli: dict[str, Any] = {
        "cwlVersion": "v1.0",
        "class": "CommandLineTool",
        "baseCommand": ["sh", "-c"],
        "inputs": inputs,
        "outputs": outputs or {},
    }
    if stdout:
        cli["stdout"] = stdout
    if stderr:
        cli["stderr"] = stderr
    settings: dict[str, Any] = {"image": {"url": image}}
    if ram:
        settings["ram"] = ram
    if gpus:
        settings["gpus"] = gpus
    red: dict[str, Any] = {
        "redVersion": "9",
        "cli": cli,
        "inputs": {"script": script, "n": 0},
        "outputs": job_outputs or {},
        "container": {"engine": "docker", "settings": settings},
        "execution": {"engine": "ccfaice", "settings": {}},
    }
    if sweep:
        red["sweep"] = sweep
    path.write_text(json.dumps(red, indent=2))
    return path


def faice_containers(client, run_id: str | None = None) -> list[dict[str, Any]]:
    """faice's containers (of one run), as the engine lists them in one call (no races with
    containers that disappear while they are listed)."""
    label = RUN_LABEL if run_id is None else f"{RUN_LABEL}={run_id}"
    return client.api.containers(all=True, filters={"label": label})


def run_id_of(outdir: Path) -> str | None:
    """The run id from run.json (written before the first batch starts)."""
    try:
        return json.loads((Path(outdir) / "run.json").read_text())["runId"]
    except (OSError, ValueError, KeyError):
        return None


def read(path: Path) -> Any:
    return json.loads(Path(path).read_text())
