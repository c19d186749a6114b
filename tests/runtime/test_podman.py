"""Podman through its own CLI (Debian's 4.3; rootful, and rootless as an ordinary user):
failure classes as on Docker, the image fetched once from the registry, nothing left behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess

import pytest
from runtime_helpers import faice, faice_as_user, observable, oom_sweep, ordinary_home, records, sweep_red

pytestmark = [pytest.mark.slow]


def podman_containers(run_id: str) -> list[str]:
    result = subprocess.run(["podman", "ps", "-aq", "--filter", f"label=org.faice.run={run_id}"],
                            capture_output=True, text=True, timeout=60)
    return result.stdout.split()


def test_out_of_memory_batch_is_classified_oom_on_podman(registry, podman, tmp_path):
    found = oom_sweep(tmp_path, registry, "podman")
    assert found[0]["state"] == "succeeded"
    assert found[1]["failureClass"] == "oom", found[1]["message"]
    assert "RAM limit of 256 MB" in found[1]["message"]
    assert not podman_containers(found[1]["runId"])


def test_exit_code_and_missing_command_are_the_commands_failures(registry, podman, tmp_path):
    red = sweep_red(tmp_path / "exit.red.json", registry, batches=2,
                    script='if [ "$0" = 1 ]; then exec no-such-program; fi; exit 9')
    outdir = tmp_path / "run"
    faice("exec", str(red), "--runtime", "podman", "--outdir", str(outdir), "--no-progress")
    found = records(outdir)
    assert (found[0]["failureClass"], found[0]["process"]["returnCode"]) == ("exit-code", 9)
    assert found[1]["failureClass"] == "exit-code" and found[1]["process"]["returnCode"] == 127


def test_timeout_kills_the_container_and_leaves_none(registry, podman, tmp_path):
    red = sweep_red(tmp_path / "slow.red.json", registry, batches=1, script="echo started; sleep 60")
    outdir = tmp_path / "run"
    result = faice("exec", str(red), "--runtime", "podman", "--outdir", str(outdir), "--timeout", "2",
                   "--no-progress", timeout=60)
    assert result.returncode == 1, result.stderr
    (record,) = records(outdir).values()
    assert record["failureClass"] == "timeout"
    assert (outdir / "batches" / record["batchId"] / "stdout.txt").read_text() == "started\n"
    assert not podman_containers(record["runId"])


def test_eight_concurrent_batches_fetch_the_image_once(registry, podman, tmp_path):
    subprocess.run(["podman", "rmi", "--force", registry.image], capture_output=True, timeout=120)
    since = registry.log_offset()
    red = sweep_red(tmp_path / "sweep.red.json", registry)
    outdir = tmp_path / "run"
    result = faice("exec", str(red), "--runtime", "podman", "--outdir", str(outdir), "--parallel", "8",
                   "--no-progress")
    assert result.returncode == 0, result.stderr
    assert len(observable(outdir)) == 8
    fetched = registry.blob_fetches(since, "containers/image")  # podman's own requests
    assert fetched and set(fetched.values()) == {1}, fetched  # every blob (config, layer) exactly once
    image = json.loads(subprocess.run(["podman", "image", "inspect", registry.image], capture_output=True,
                                      text=True, timeout=60).stdout)[0]
    assert {r["image"]["id"] for r in records(outdir).values()} == {image["Id"]}


def test_a_batch_that_ends_by_itself_is_one_podman_process(registry, podman, tmp_path):
    """Every podman invocation costs its start-up (~50–150 ms): a batch is its ``podman run
    --rm`` alone — no ``podman rm`` after a container ``--rm`` already removed — and still
    leaves no container behind."""
    calls = tmp_path / "calls"
    shim = tmp_path / "bin" / "podman"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\necho "$1" >> {calls}\nexec {shutil.which("podman")} "$@"\n')
    shim.chmod(0o755)
    red = sweep_red(tmp_path / "sweep.red.json", registry, batches=3)
    outdir = tmp_path / "run"
    result = faice("exec", str(red), "--runtime", "podman", "--outdir", str(outdir), "--no-progress",
                   env={"PATH": f"{shim.parent}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert [found[0] for found in observable(outdir).values()] == ["succeeded"] * 3
    per_batch = [call for call in calls.read_text().split() if call not in ("ps", "image", "pull")]
    assert per_batch == ["run"] * 3
    assert not podman_containers(next(iter(records(outdir).values()))["runId"])


def test_rootless_podman_as_an_ordinary_user_gives_the_same_records_as_rootful(registry, podman, tmp_path):
    """Podman rootless: an ordinary user with subordinate ids (newuidmap/newgidmap, user
    namespaces), its own storage in its home, runs the sweep and gets rootful Podman's records;
    the outputs are the user's own files and no container is left in its storage."""
    with ordinary_home("podman") as (account, home):
        runtime_dir = home / "xdg-run"
        config = home / ".config" / "containers"
        config.mkdir(parents=True)
        (config / "storage.conf").write_text('[storage]\ndriver = "overlay"\n')  # the kernel's; vfs copies per container
        runtime_dir.mkdir(mode=0o700)
        data = home / "data.txt"
        data.write_text("the staged input\n")
        red = sweep_red(home / "sweep.red.json", registry, batches=2, data=data)
        for path in (runtime_dir, home / ".config", config, config / "storage.conf", data, red):
            os.chown(path, account.pw_uid, account.pw_gid)
        env = {"XDG_RUNTIME_DIR": str(runtime_dir)}
        try:
            result = faice_as_user(home, "exec", str(red), "--runtime", "podman", "--outdir", str(home / "out"),
                                   "--no-progress", env=env, timeout=600)
            assert result.returncode == 0, result.stderr[-2000:]
            left = subprocess.run(["runuser", "-u", account.pw_name, "--", "env", f"HOME={home}",
                                   f"XDG_RUNTIME_DIR={runtime_dir}", "podman", "ps", "-aq"], cwd=home,
                                  capture_output=True, text=True, timeout=120)
            assert left.returncode == 0 and not left.stdout.split(), left
        finally:
            pause = runtime_dir / "libpod" / "tmp" / "pause.pid"  # rootless Podman's namespace keeper
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pause.read_text()), signal.SIGKILL)
        rootful = faice("exec", str(red), "--runtime", "podman", "--outdir", str(tmp_path / "rootful"),
                        "--no-progress")
        assert rootful.returncode == 0, rootful.stderr[-2000:]
        found = observable(home / "out")
        assert found[1] == ("succeeded", None, 0, "batch 1 of the staged input\n", "value=7\n")
        assert found == observable(tmp_path / "rootful")
        for record in records(home / "out").values():
            assert record["runtime"] == "podman"
            assert (home / "out" / "batches" / record["batchId"] / "outputs" / "result.txt").stat().st_uid == account.pw_uid
