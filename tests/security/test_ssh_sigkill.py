"""A SIGKILLed ``faice exec`` during an ssh transfer leaves nothing running and no secret
on disk once faice starts again (issues 12.5, 12.8, 15.3), against the real sshd."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ssh, pytest.mark.docker]

SIZE = 300 * 1024 * 1024


def _red(path: Path, image: str, file_input: dict) -> Path:
    red = {
        "redVersion": "9",
        "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["sh", "-c", 'test -f "$0"'],
                "inputs": {"f": {"type": "File", "inputBinding": {"position": 0}}}, "outputs": {}},
        "inputs": {"f": file_input},
        "outputs": {},
        "container": {"engine": "docker", "settings": {"image": {"url": image}}},
        "execution": {"engine": "ccfaice", "settings": {}},
    }
    path.write_text(json.dumps(red))
    return path


def _processes_naming(text: str) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in argv:
                found.append((int(entry.name), argv))
    return found


def _files_holding(root: Path, secret: bytes) -> list[Path]:
    hits = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 1 << 20 and secret in path.read_bytes():
                hits.append(path)
        except OSError:
            continue
    return hits


@pytest.fixture
def big_remote_file(ssh_server):
    name = f"sigkill-{uuid.uuid4().hex[:10]}.bin"
    path = ssh_server.home / "data" / name
    path.parent.mkdir(exist_ok=True)
    with open(path, "wb") as handle:  # random: nothing along the way compresses it
        for _ in range(SIZE // (8 << 20)):
            handle.write(os.urandom(8 << 20))
    os.chown(path, *(lambda e: (e.pw_uid, e.pw_gid))(__import__("pwd").getpwnam(ssh_server.user)))
    yield name
    path.unlink(missing_ok=True)


def test_sigkill_during_ssh_transfer_leaves_no_process_and_no_secret(
        ssh_server, big_remote_file, test_image, tmp_path):
    scratch = tmp_path / "tmp"  # faice's $TMPDIR: every temp file it makes lands here
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    access = {"host": ssh_server.host, "port": ssh_server.port,
              "auth": {"username": ssh_server.user, "password": ssh_server.password},
              "hostKeyPolicy": "ignore", "filePath": f"data/{big_remote_file}"}
    red = _red(tmp_path / "big.json", test_image, {"class": "File", "connector": {"command": "ssh", "access": access}})
    proc = subprocess.Popen([sys.executable, "-m", "faice", "exec", str(red), "--outdir", str(tmp_path / "run"),
                             "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        receiving = False
        while time.monotonic() < deadline and proc.poll() is None and not receiving:
            receiving = any(p.is_file() and p.stat().st_size > 4 << 20 for p in scratch.rglob(big_remote_file))
            time.sleep(0.02)
        assert receiving, proc.stderr.read().decode() if proc.poll() is not None else "the transfer never began"
    finally:
        proc.kill()  # SIGKILL: no chance to clean up
        proc.wait(timeout=10)
    time.sleep(0.5)
    left = _processes_naming(big_remote_file)
    for pid, _argv in left:
        os.kill(pid, 9)
    assert left == [], "a transfer process outlived faice"

    # a dead owner's sshfs scratch dir (as left by a SIGKILL during a mount) is removed too
    from faice.runtime.docker import process_start_time

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = scratch / "faice-sshfs-stale"
    stale.mkdir(mode=0o700)
    (stale / "owner").write_text(f"{socket.gethostname()}:{dead.pid}:{process_start_time(os.getpid())}")
    (stale / "key").write_text(ssh_server.password)

    quick = _red(tmp_path / "quick.json", test_image, {"class": "File", "connector": {
        "command": "ssh", "access": {**access, "filePath": f"data/{big_remote_file}.missing"}}})
    subprocess.run([sys.executable, "-m", "faice", "exec", str(quick), "--outdir", str(tmp_path / "next"),
                    "--no-progress"], env=env, capture_output=True, timeout=120)
    assert _files_holding(scratch, ssh_server.password.encode()) == []
    assert not list(scratch.glob("faice-ssh-*")) and not list(scratch.glob("faice-sshfs-*"))
