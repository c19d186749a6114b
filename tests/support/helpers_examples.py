"""Shared helpers of the example tests: where the examples are, and running the faice CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
# The example directories the docs own; examples/local and examples/slurm test themselves.
OWN_EXAMPLES = ("ml-guide", "http", "s3", "random-search", "stdout-stderr")


def red_files() -> list[Path]:
    """Every RED file of the examples owned here (YAML and JSON)."""
    found: list[Path] = []
    for name in OWN_EXAMPLES:
        folder = EXAMPLES / name
        if folder.is_dir():
            found += sorted(folder.glob("*.red.yml")) + sorted(folder.glob("*.red.json"))
    return found


def faice(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300,
          input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m faice ARGS`` the way a user runs ``faice``; never through a shell."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "faice", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def load_yaml(path: Path) -> Any:
    from ruamel.yaml import YAML

    return json.loads(json.dumps(YAML(typ="safe").load(path.read_text())))


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def run_in_image(image: str, mount: Path, *command: str) -> str:
    """Run a command in ``image``, offline, as this user, with ``mount`` at /work; returns stdout."""
    result = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--label", "org.faice.test=1",
         "-u", f"{os.getuid()}:{os.getgid()}", "-v", f"{mount}:/work", "-w", "/work", image, *command],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, explain(result)
    return result.stdout
