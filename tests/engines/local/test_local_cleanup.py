"""Nothing left behind: signals to a running ``faice exec``, SIGKILLed runs, dry runs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_helpers import faice_containers, run_id_of, sh_red

pytestmark = pytest.mark.docker


def faice(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "faice", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kwargs)


def wait_for(predicate, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return predicate()


def run_tempdirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("faice-run-*"))


def running_run(client, outdir: Path, count: int):
    """A predicate: the run id once ``count`` containers of the run in ``outdir`` are running."""

    def check() -> str | None:
        run_id = run_id_of(outdir)
        if run_id is None:
            return None
        running = [c for c in faice_containers(client, run_id) if c["State"] == "running"]
        return run_id if len(running) >= count else None

    return check


@contextlib.contextmanager
def started(client, red: Path, outdir: Path, *args: str, running: int = 1) -> Iterator[tuple[subprocess.Popen, str]]:
    """``faice exec RED --outdir OUTDIR ARGS`` in the background: yields it and its run id once
    ``running`` of its containers run (within 30 s), and kills it if it still runs at the end."""
    proc = faice("exec", str(red), "--outdir", str(outdir), *args, "--no-progress")
    try:
        run_id = wait_for(running_run(client, outdir, running), 30)
        assert run_id, proc.stderr.read() if proc.poll() is not None else "no running containers"
        yield proc, run_id
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_and_removes_everything(tmp_path, docker_client, test_image, signum, code):
    red = sh_red(tmp_path / "r.json", "sleep 60", test_image, sweep={"grid": {"n": [1, 2, 3]}})
    with started(docker_client, red, tmp_path / "run", "--parallel", "2", running=2) as (proc, run_id):
        proc.send_signal(signum)
        signalled = time.monotonic()
        assert wait_for(lambda: not faice_containers(docker_client, run_id), 10), "containers left after 10 s"
        out, err = proc.communicate(timeout=20)
        assert time.monotonic() - signalled < 12
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert not [d for d in run_tempdirs() if d.name.startswith(f"faice-run-{run_id}-")]
    assert f"faice-run-{run_id}" not in Path("/proc/self/mounts").read_text()
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["state"] == "cancelled"
    assert run["counts"] == {"cancelled": 3}


def test_second_ctrl_c_kills_at_once(tmp_path, docker_client, test_image):
    red = sh_red(tmp_path / "r.json", "sleep 60", test_image)
    with started(docker_client, red, tmp_path / "run") as (proc, run_id):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        proc.communicate(timeout=20)
        assert time.monotonic() - signalled < 2.0  # no grace period the second time
    assert proc.returncode == 130
    assert not faice_containers(docker_client, run_id)


def test_leftovers_of_a_sigkilled_run_are_removed_at_the_next_start(tmp_path, docker_client, test_image):
    red = sh_red(tmp_path / "r.json", "sleep 60", test_image)
    with started(docker_client, red, tmp_path / "killed") as (proc, run_id):
        proc.kill()  # SIGKILL: no chance to clean up
        proc.communicate(timeout=10)
    leftovers = faice_containers(docker_client, run_id)
    assert leftovers, "the SIGKILLed run should have left its container"
    assert [d for d in run_tempdirs() if d.name.startswith(f"faice-run-{run_id}-")], "the killed run left no temp dir"

    still_there = bool(faice_containers(docker_client, run_id))  # (another faice start may have won the race)
    quick = sh_red(tmp_path / "q.json", "true", test_image)
    done = subprocess.run([sys.executable, "-m", "faice", "exec", str(quick), "--outdir", str(tmp_path / "next"),
                           "--no-progress"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not still_there or "container(s) left behind by killed runs" in done.stderr
    assert not faice_containers(docker_client, run_id)
    assert not [d for d in run_tempdirs() if d.name.startswith(f"faice-run-{run_id}-")]


def test_leave_container_keeps_it_on_purpose(tmp_path, docker_client, test_image):
    red = sh_red(tmp_path / "r.json", "true", test_image)
    done = subprocess.run([sys.executable, "-m", "faice", "exec", str(red), "--outdir", str(tmp_path / "run"),
                           "--leave-container", "--json", "--no-progress"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # --json: the run summary, alone on stdout
    run_id = summary["runId"]
    assert summary["counts"] == {"succeeded": 1}
    assert f"batch 1/1 {summary['batches'][0]['id']} succeeded" in done.stderr  # one line per batch
    assert f"faice: run {run_id} succeeded: 1 succeeded; records in" in done.stderr
    try:
        (kept,) = faice_containers(docker_client, run_id)
        assert kept["Labels"]["org.faice.keep"] == "1" and kept["State"] == "exited"
    finally:
        for container in faice_containers(docker_client, run_id):
            docker_client.api.remove_container(container["Id"], force=True)


def test_dry_run_needs_no_docker_and_creates_nothing(tmp_path, docker_client, test_image):
    marker = f"dry-run-{uuid.uuid4().hex}"
    red = sh_red(tmp_path / "r.json", f"echo {marker}", test_image, sweep={"grid": {"n": [4, 5]}})
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    done = subprocess.run([sys.executable, "-m", "faice", "exec", str(red), "--dry-run", "--outdir",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert f"sh -c 'echo {marker}' 4" in done.stdout and f"sh -c 'echo {marker}' 5" in done.stdout
    assert "image: " + test_image in done.stdout
    assert "/cc/outputs (rw)" in done.stdout
    assert not (tmp_path / "run").exists()
    assert not [c for c in docker_client.api.containers(all=True) if marker in (c.get("Command") or "")]

    as_json = subprocess.run([sys.executable, "-m", "faice", "exec", str(red), "--dry-run", "--json"],
                             capture_output=True, text=True, timeout=60, env=env)
    plan = json.loads(as_json.stdout)
    assert [b["command"][-1] for b in plan["batches"]] == ["4", "5"]
