"""Shared by the runtime tests: the registry, the sweep RED file they all run, and faice."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ORDINARY_USER = "faicepw"  # an account scripts/infra.sh makes (the SSH tests' user, with subordinate ids)
# The test venv's Python may live where the user cannot run it; Debian's (the same 3.11) reads its packages.
SYSTEM_PYTHON_FAICE = ("import runpy, site, sys; site.addsitedir(sys.argv.pop(1)); "
                       "runpy.run_module('faice', run_name='__main__', alter_sys=True)")
SWEEP_SCRIPT = 'echo "batch $0 of $(cat /cc/inputs/data/*)"; echo "value=$(( $0 * 7 ))" > result.txt'


@dataclass
class Registry:
    host: str
    user: str
    password: str
    log: Path
    image: str  # the base test image, pushed there

    def answers(self) -> bool:
        name, _, port = self.host.rpartition(":")
        try:
            with socket.create_connection((name, int(port)), timeout=2):
                return True
        except OSError:
            return False

    def log_offset(self) -> int:
        return self.log.stat().st_size

    def blob_fetches(self, since: int, agent: str = "") -> dict[str, int]:
        """Blob digest → how many times it was fetched (GET, 200) since ``since`` (log offset)
        by a client whose User-Agent holds ``agent`` (one runtime's, where others may pull too)."""
        with open(self.log, "rb") as handle:
            handle.seek(since)
            text = handle.read().decode("utf-8", "replace")
        repository = self.image.split("/", 1)[1].rsplit(":", 1)[0]
        fetched: dict[str, int] = {}
        pattern = re.compile(rf'"GET /v2/{re.escape(repository)}/blobs/(sha256:[0-9a-f]+) HTTP/[0-9.]+" 200 '
                             r'\S+ "[^"]*" "([^"]*)"')
        for match in pattern.finditer(text):
            if agent in match.group(2):
                fetched[match.group(1)] = fetched.get(match.group(1), 0) + 1
        return fetched


def sweep_red(path: Path, registry: Registry, *, engine: str = "docker", batches: int = 8,
              script: str = SWEEP_SCRIPT, ram: int | None = None, data: Path | None = None,
              execution: dict[str, Any] | None = None) -> Path:
    """A RED 9 sweep of ``batches`` batches (``sh -c SCRIPT n``) on the registry's image, pulled
    with the registry's credentials, one File input staged from ``data``."""
    if data is None:
        data = path.parent / "data.txt"
        data.write_text("the staged input\n")
    settings: dict[str, Any] = {"image": {"url": registry.image,
                                          "auth": {"username": registry.user, "password": registry.password}}}
    if ram:
        settings["ram"] = ram
    red = {
        "redVersion": "9",
        "cli": {
            "cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["sh", "-c"],
            "inputs": {"script": {"type": "string", "inputBinding": {"position": 0}},
                       "n": {"type": "int", "inputBinding": {"position": 1}},
                       "data": {"type": "File", "inputBinding": {"position": 2}}},
            "outputs": {"result": {"type": "File", "outputBinding": {"glob": "result.txt"}}},
        },
        "inputs": {"script": script, "n": 0,
                   "data": {"class": "File", "connector": {"command": "file", "access": {"path": str(data)}}}},
        "outputs": {},
        "sweep": {"grid": {"n": list(range(batches))}},
        "container": {"engine": engine, "settings": settings},
        "execution": execution or {"engine": "ccfaice", "settings": {}},
    }
    path.write_text(json.dumps(red, indent=2))
    return path


def faice(*args: str, timeout: float = 300, env: dict[str, str] | None = None,
          user: str | None = None) -> subprocess.CompletedProcess:
    """The faice CLI in a subprocess (as ``user`` through runuser when given)."""
    argv = [sys.executable, "-m", "faice", *args]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          env={**os.environ, "NO_COLOR": "1", **(env or {})})


def run_on(runtime: str, red: Path, outdir: Path, exit_code: int = 0) -> None:
    """``faice exec RED --runtime RUNTIME --outdir OUTDIR``, which must end with ``exit_code``."""
    result = faice("exec", str(red), "--runtime", runtime, "--outdir", str(outdir), "--no-progress")
    assert result.returncode == exit_code, f"{runtime}: {result.stderr[-2000:]}"


def submit_and_wait(red: Path, outdir: Path) -> dict[int, tuple]:
    """``faice exec RED --outdir OUTDIR`` on an engine that submits (Slurm), then ``faice status
    --wait`` until every batch is final (both must succeed): what each batch left (:func:`observable`)."""
    submitted = faice("exec", str(red), "--outdir", str(outdir))
    assert submitted.returncode == 0, submitted.stderr
    status = faice("status", "--outdir", str(outdir), "--wait", "--json", timeout=300)
    assert status.returncode == 0, status.stderr
    return observable(outdir)


def oom_sweep(tmp_path: Path, registry: Registry, runtime: str) -> dict[int, dict]:
    """A 2-batch sweep under a 256 MB RAM limit whose batch 1 allocates 900 MiB, run on
    ``runtime`` (the run fails): its records."""
    red = sweep_red(tmp_path / "oom.red.json", registry, batches=2, ram=256,
                    script='echo fine > result.txt; if [ "$0" = 1 ]; then exec python3 -c "x = bytearray(900 * 2**20)"; fi')
    run_on(runtime, red, tmp_path / "run", exit_code=1)
    return records(tmp_path / "run")


def records(outdir: Path) -> dict[int, dict]:
    """Batch index → its result.json."""
    found = {}
    for path in (outdir / "batches").glob("*/result.json"):
        record = json.loads(path.read_text())
        found[record["batchIndex"]] = record
    return found


def observable(outdir: Path) -> dict[int, tuple]:
    """What a user compares across runtimes: state, failure class, return code, stdout and
    the output file, per batch index."""
    found = {}
    for index, record in records(outdir).items():
        directory = outdir / "batches" / record["batchId"]
        result = directory / "outputs" / "result.txt"
        found[index] = (record["state"], record.get("failureClass"), (record.get("process") or {}).get("returnCode"),
                        (directory / "stdout.txt").read_text(),
                        result.read_text() if result.exists() else None)
    return found


@contextlib.contextmanager
def ordinary_home(tag: str) -> Iterator[tuple[pwd.struct_passwd, Path]]:
    """The ordinary user's account and a fresh home of its own under /tmp, removed after."""
    account = pwd.getpwnam(ORDINARY_USER)
    home = Path(f"/tmp/faice-{tag}-user-{os.getpid()}")
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir()
    os.chown(home, account.pw_uid, account.pw_gid)
    try:
        yield account, home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def faice_as_user(home: Path, *args: str, env: dict[str, str] | None = None,
                  timeout: float = 300) -> subprocess.CompletedProcess:
    """The faice CLI run by :data:`ORDINARY_USER` (runuser) with ``home`` as its home."""
    env = {"HOME": str(home), "USER": ORDINARY_USER, "FAICE_CACHE_DIR": "", **(env or {})}
    return subprocess.run(
        ["runuser", "-u", ORDINARY_USER, "--", "env", *(f"{k}={v}" for k, v in env.items()),
         "/usr/bin/python3", "-c", SYSTEM_PYTHON_FAICE, sysconfig.get_path("purelib"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=home, stdin=subprocess.DEVNULL)
