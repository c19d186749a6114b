"""Per-batch memory cgroups a SIGKILLed faice left behind are removed at the next start: only
faice's own naming (``faice/<batch name>.<pid>-<start time>``), only when that faice process
is gone, only empty ones. Real cgroups (v1 memory controller here, as root)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runtime_helpers import faice, sweep_red

from faice.runtime import cgroups

pytestmark = [pytest.mark.slow]


def faice_cgroups() -> Path:
    if not cgroups.can_limit_memory():
        pytest.skip("faice may not create memory cgroups here (not root / no delegated cgroup v2)")
    v1 = cgroups.ROOT / "memory" / cgroups.PARENT
    parent = v1 if (cgroups.ROOT / "memory" / "memory.limit_in_bytes").exists() else cgroups.ROOT / cgroups.PARENT
    parent.mkdir(exist_ok=True)
    return parent


def test_only_empty_cgroups_of_gone_faice_processes_in_faices_naming_are_removed(tmp_path):
    parent = faice_cgroups()
    live = subprocess.Popen(["sleep", "300"])  # stands for a running faice process
    tag = f"t{os.getpid()}"
    try:
        start = cgroups._start_time(live.pid)
        made = {
            "live": parent / f"faice-{tag}-live-0a1b2c3d.{live.pid}-{start}",  # its faice runs: stays
            "reused": parent / f"faice-{tag}-reused-0a1b2c3d.{live.pid}-1",  # the pid now is another process's
            "foreign": parent / f"someone-elses-{tag}",  # not faice's naming: stays
            "busy": parent / f"faice-{tag}-busy-0a1b2c3d.{live.pid}-2",  # still holds a process: stays
        }
        for path in made.values():
            path.mkdir()
        (made["reused"] / "child").mkdir()  # a runtime's cgroup below the batch's (Podman's libpod-…)
        (made["busy"] / "cgroup.procs").write_text(str(live.pid))
        removed = cgroups.remove_stale_cgroups(settle_s=0)
        assert f"cgroup faice/{made['reused'].name}" in removed
        assert not made["reused"].exists()
        assert made["live"].is_dir() and made["foreign"].is_dir() and made["busy"].is_dir()
        live.kill()
        live.wait()
        removed = cgroups.remove_stale_cgroups(settle_s=5)  # its last process gone: now empty
        assert not made["busy"].exists() and not made["live"].exists()
        assert made["foreign"].is_dir()
    finally:
        live.kill()
        for path in parent.glob(f"*{tag}*"):
            for child in sorted(path.rglob("*"), reverse=True):
                if child.is_dir():
                    child.rmdir()
            path.rmdir()


def test_the_batch_cgroup_of_a_sigkilled_faice_is_removed_at_the_next_start(registry, charliecloud, image_cache,
                                                                           tmp_path):
    parent = faice_cgroups()
    marker = f"{5000 + os.getpid() % 1000}.75"  # a sleep nobody else runs
    red = sweep_red(tmp_path / "slow.red.json", registry, batches=1, ram=256,
                    script=f"echo started; sleep {marker}; true")
    process = subprocess.Popen([sys.executable, "-m", "faice", "exec", str(red), "--runtime", "charliecloud",
                                "--outdir", str(tmp_path / "run"), "--no-progress"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    pattern = f"faice-*.{process.pid}-*"
    deadline = time.monotonic() + 240
    while not list(parent.glob(pattern)) and time.monotonic() < deadline:
        time.sleep(0.2)
    (left,) = parent.glob(pattern)
    while not (left / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.2)  # the batch is in it
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(1)
    # The batch's processes may be gone already: any faice started on this host meanwhile (a
    # concurrent test's, maybe an older faice) ends a dead faice's process groups. Only the
    # cgroup sweep removes the cgroup: without it, it stays for good.
    again = faice("exec", str(sweep_red(tmp_path / "quick.red.json", registry, batches=1)), "--runtime",
                  "charliecloud", "--outdir", str(tmp_path / "next"), "--no-progress")
    assert again.returncode == 0, again.stderr[-2000:]
    assert not left.exists()
