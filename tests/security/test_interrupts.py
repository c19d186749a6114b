"""Ctrl-C and SIGTERM stop everything, at any moment (issue 12, item 8).

A real ``faice exec`` (a subprocess) against the real Docker engine, interrupted at random
moments: each run ends within 10 s with 130/143, leaves no container (label filter), no faice
temp dir and no secret on disk. A download from a slow HTTP server stops at the first
signal, its partial file removed. A SIGKILLed run is marked ``interrupted`` at the next start.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_helpers import faice_containers, run_id_of, sh_red
from slow_http import SlowServer

from faice.connectors.staging import ConnectorRequest, StagingSession
from faice.errors import ConnectorError
from faice.runtime.tempdirs import PREFIXES

EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def faice_exec(red: Path, outdir: Path, variables: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "faice", "exec", str(red), "--outdir", str(outdir), "--no-progress",
         "--parallel", "2", "--variables", str(variables), "--non-interactive"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def killed_at_the_end(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """``proc``, SIGKILLed on leaving the block if it still runs (a failed check leaves no faice behind)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def interrupt(proc: subprocess.Popen, signum: int) -> tuple[str, str, float]:
    """Send ``signum`` to faice and wait 10 s at most for its end: stdout, stderr and the seconds it took."""
    proc.send_signal(signum)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=10)
    return out, err, time.monotonic() - sent


def owned_tempdirs(pid: int) -> list[Path]:
    """faice temp dirs whose owner file names process ``pid``."""
    found = []
    for prefix in PREFIXES:
        for path in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
            try:
                token = (path / "owner").read_text()
            except OSError:
                continue
            if token.split(":")[1:2] == [str(pid)]:
                found.append(path)
    return found


def files_holding(root: Path, secret: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and secret in p.read_bytes()]


def http_sweep_red(tmp_path: Path, image: str, url: str, script: str) -> tuple[Path, Path]:
    """A 3-batch sweep whose File input comes over HTTP with a password from a variable."""
    red = sh_red(tmp_path / "r.json", script, image, sweep={"grid": {"n": [1, 2, 3]}},
                 extra_inputs={"data": {"type": "File", "inputBinding": {"position": 2}}})
    data = json.loads(red.read_text())
    data["inputs"]["data"] = {"class": "File", "connector": {"command": "http", "access": {
        "url": url, "auth": {"method": "basic", "username": "u", "password": "{{token}}"}}}}
    red.write_text(json.dumps(data))
    return red, tmp_path / "vars.yml"


@pytest.mark.docker
@pytest.mark.slow
def test_random_interrupts_leave_nothing_and_never_hang(tmp_path, docker_client, test_image):
    secret = "Tok-" + os.urandom(6).hex()
    rng = random.Random(8)
    budget_s, runs, interrupted = 420.0, 0, 0
    with SlowServer(f"the token is {secret}\n".encode()) as server:
        red, variables = http_sweep_red(tmp_path, test_image, server.url + "/small",
                                        'cat "$1"; echo "$1" >&2; sleep 1.5')
        variables.write_text(f"token: {secret}\n")
        started = time.monotonic()
        while runs < 100 and (runs < 40 or time.monotonic() - started < budget_s):
            outdir = tmp_path / f"run{runs}"
            signum = rng.choice([signal.SIGINT, signal.SIGTERM])
            delay = rng.uniform(0.3, 4.0)
            with killed_at_the_end(faice_exec(red, outdir, variables)) as proc:
                time.sleep(delay)
                out, err, took = interrupt(proc, signum)
            where = f"run {runs} ({signal.Signals(signum).name} after {delay:.2f} s)"
            state = (json.loads((outdir / "run.json").read_text()) if (outdir / "run.json").exists() else {}).get("state")
            if proc.returncode == 0:
                assert state == "succeeded", where  # the signal came after the run ended
            elif proc.returncode == -signum:
                # The signal came while Python was still starting, before faice's main():
                # the default action ended it (a shell reports 128+N), nothing was created.
                assert not outdir.exists(), f"{where}: killed by the signal after starting\n{err}"
                runs += 1
                continue
            else:
                interrupted += 1
                assert proc.returncode == EXIT[signum], f"{where}: exit {proc.returncode}\n{err}"
                assert took < 10, f"{where}: took {took:.1f} s"
            assert "Traceback" not in err, f"{where}\n{err}"
            run_id = run_id_of(outdir)
            if run_id:
                assert not faice_containers(docker_client, run_id), f"{where}: containers left"
            assert not owned_tempdirs(proc.pid), f"{where}: temp dirs left"
            if outdir.exists():
                assert not files_holding(outdir, secret.encode()), f"{where}: secret on disk"
            assert secret not in out + err, where
            runs += 1
    print(f"{runs} runs, {interrupted} interrupted, {time.monotonic() - started:.0f} s")
    assert interrupted >= runs // 2


@pytest.mark.http
def test_http_download_stops_at_cancel_and_leaves_no_partial_file(tmp_path):
    """Before: the download went on to the end of the file (minutes for a large one)."""
    cancel = threading.Event()
    with SlowServer(b"", size=2 * 2**30, rate=4 * 2**20) as server:
        session = StagingSession(tmp_path / "staging", cancel=cancel)
        request = ConnectorRequest("inputs.big", "http", {"url": server.url + "/big"})
        failure: list[BaseException] = []

        def download() -> None:
            try:
                session.stage_in(request, "File")
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=download)
        thread.start()
        parts = lambda: [p for p in (tmp_path / "staging").rglob("*") if p.is_file()]  # noqa: E731
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(p.stat().st_size > 2**20 for p in parts()):
            time.sleep(0.05)
        assert parts(), "the download never started"
        cancel.set()
        set_at = time.monotonic()
        thread.join(10)
        took = time.monotonic() - set_at
        assert not thread.is_alive()
        assert took < 1.5, f"the download went on {took:.1f} s after cancel"
        assert failure and isinstance(failure[0], ConnectorError) and "cancelled" in str(failure[0])
        assert not parts(), "partial download left"
        session.close()


@pytest.mark.docker
@pytest.mark.slow
def test_ctrl_c_during_a_large_http_download_ends_within_seconds(tmp_path, docker_client, test_image):
    with SlowServer(b"", size=2 * 2**30, rate=8 * 2**20) as server:
        red, variables = http_sweep_red(tmp_path, test_image, server.url + "/big", "true")
        variables.write_text("token: Tok-big-download\n")
        with killed_at_the_end(faice_exec(red, tmp_path / "run", variables)) as proc:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not server.big_requests:
                time.sleep(0.1)
            assert server.big_requests, "the download never started"
            time.sleep(1.0)
            _out, err, took = interrupt(proc, signal.SIGINT)
    assert proc.returncode == 130, err
    assert took < 5, f"faice went on for {took:.1f} s after Ctrl-C"
    assert not owned_tempdirs(proc.pid)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["state"] == "cancelled"


@pytest.mark.docker
def test_sigkilled_run_is_marked_interrupted_at_the_next_start(tmp_path, docker_client, test_image):
    # A TMPDIR of its own: other faice processes on this host (older versions included) must
    # not clean the dead run's temp dir before the run under test does.
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    red = sh_red(tmp_path / "r.json", "sleep 60", test_image)
    proc = subprocess.Popen([sys.executable, "-m", "faice", "exec", str(red), "--outdir", str(tmp_path / "killed"),
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            run_id = run_id_of(tmp_path / "killed")
            if run_id and faice_containers(docker_client, run_id):
                break
            time.sleep(0.1)
        else:
            pytest.fail("the run never started its container")
    finally:
        proc.kill()
        proc.communicate(timeout=10)
    killed = json.loads((tmp_path / "killed" / "run.json").read_text())
    assert killed["state"] == "running" and killed["owner"].split(":")[1] == str(proc.pid)
    quick = sh_red(tmp_path / "q.json", "true", test_image)
    assert list(private_tmp.glob("faice-run-*")), "the killed run left no temp dir"
    done = subprocess.run([sys.executable, "-m", "faice", "exec", str(quick), "--outdir", str(tmp_path / "next"),
                           "--no-progress"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    after = json.loads((tmp_path / "killed" / "run.json").read_text())
    assert after["state"] == "interrupted" and after["interrupted"]
    assert not list(private_tmp.glob("faice-*"))
    assert not faice_containers(docker_client, run_id)


def test_stale_temp_dirs_of_every_faice_prefix_are_removed(tmp_path):
    """faice-check-*, faice-ssh-*, faice-sshfs-* too, not only faice-run-* (a dead owner's
    ssh dir holds a password file)."""
    from faice.runtime.tempdirs import remove_stale_tempdirs

    dead = subprocess.Popen(["true"])
    dead.wait()
    token = f"{os.uname().nodename}:{dead.pid}:1"
    alive = f"{os.uname().nodename}:{os.getpid()}:"
    made = {}
    for prefix in PREFIXES:
        for owner in (token, alive):
            path = tmp_path / f"{prefix}{owner == token}"
            path.mkdir(mode=0o700)  # as faice makes them: private
            (path / "owner").write_text(owner)
            (path / "secret").write_text("pw")
            made[path] = owner
    stranger = tmp_path / "faice-ssh-noowner"
    stranger.mkdir(mode=0o700)
    removed = remove_stale_tempdirs(tmp_path)
    assert set(removed) == {p for p, o in made.items() if o == token}
    assert all(p.exists() for p, o in made.items() if o == alive) and stranger.exists()
