"""Podman through its own CLI (Debian's 4.3, rootful here): failure classes as on Docker, the
image fetched once from the registry, nothing left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from runtime_helpers import faice, observable, oom_sweep, records, sweep_red

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
    fetched = registry.blob_fetches(since)
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
