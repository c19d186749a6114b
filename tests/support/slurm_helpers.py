"""Shared by the Slurm tests: polling with a clear failure, and the sweep RED they run."""

from __future__ import annotations

import json
import time
from pathlib import Path

SWEEP_RED = """\
redVersion: "9"
cli:
  cwlVersion: v1.0
  class: CommandLineTool
  baseCommand: [sh, -c]
  inputs:
    script: {{type: string, inputBinding: {{position: 0}}}}
  outputs:
    result: {{type: File, outputBinding: {{glob: result.txt}}}}
sweep:
  grid:
    n: {values}
inputs:
  script: {script}
outputs: {outputs}
container:
  engine: docker
  settings: {{image: {{url: "{image}"}}, ram: 256}}
execution:
  engine: {engine}
  settings: {settings}
"""


def write_sweep_red(tmp_path: Path, image: str, values: list, script: str, settings: dict, *,
                    outputs: dict | None = None, engine: str = "slurm", name: str = "sweep.red.yml") -> Path:
    """A sweep over ``n`` whose batches run ``sh -c SCRIPT`` (on the slurm engine unless
    ``engine`` says otherwise), sending ``outputs`` (the RED's ``outputs`` section)."""
    path = tmp_path / name
    path.write_text(SWEEP_RED.format(values=json.dumps(values), script=json.dumps(script), image=image,
                                     settings=json.dumps(settings), outputs=json.dumps(outputs or {}), engine=engine))
    return path


def wait_for(predicate, timeout: float = 30.0, what: str = "condition not met", interval: float = 0.2):
    """The first truthy value of ``predicate()``; AssertionError naming ``what`` after ``timeout`` s."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what} (waited {timeout} s)")
        time.sleep(interval)
