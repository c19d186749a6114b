"""What a batch left on a host is found and removed through its own container runtime, not
Docker's: the agency's start-up cleanup of a batch that was running when the server stopped
(by batch id, whichever faice ran it), and a packed Slurm worker's sweep after a dead worker's
lease expired (what faice processes that are gone left). Real Podman and Charliecloud."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from faice.runtime.containers import LABEL_BATCH, LABEL_OWNER, LABEL_RUN

pytestmark = [pytest.mark.slow]


def podman_image(registry) -> str:
    from faice.runtime.podman import PodmanRuntime

    PodmanRuntime().ensure_image(registry.image, auth={"username": registry.user, "password": registry.password})
    return registry.image


def podman_container(image: str, name: str, batch_id: str, owner: str) -> None:
    subprocess.run(["podman", "run", "-d", "--name", name, "--network", "none", "--label", f"{LABEL_RUN}=leftover-test",
                    "--label", f"{LABEL_BATCH}={batch_id}", "--label", f"{LABEL_OWNER}={owner}", image, "sleep", "300"],
                   check=True, capture_output=True, timeout=120)


def podman_names(prefix: str) -> set[str]:
    listed = subprocess.run(["podman", "ps", "--all", "--format", "json"], capture_output=True, text=True, timeout=60,
                            check=True)
    return {n for c in json.loads(listed.stdout or "[]") for n in c.get("Names") or [] if n.startswith(prefix)}


@pytest.fixture
def podman_leftovers(podman, registry):
    prefix = f"faice-leftover-{os.getpid()}-"
    yield podman_image(registry), prefix
    for name in podman_names(prefix):
        subprocess.run(["podman", "rm", "--force", "--time", "0", name], capture_output=True, timeout=120)


def test_agency_slurm_cleanup_removes_the_batchs_podman_containers_only(podman_leftovers, tmp_path):
    from faice.agency.slurm_runner import SlurmRunner, SlurmServerSettings
    from faice.runtime.docker import owner_token

    image, prefix = podman_leftovers
    podman_container(image, f"{prefix}mine", "b-recovered", owner_token())  # its owner may even still run
    podman_container(image, f"{prefix}other", "b-other", owner_token())
    SlurmRunner(SlurmServerSettings({}), tmp_path).cleanup("b-recovered", "podman")
    assert podman_names(prefix) == {f"{prefix}other"}


def test_packed_worker_sweeps_a_dead_workers_podman_containers_through_the_packs_runtime(podman_leftovers, tmp_path):
    from faice.engines.slurm import rundir
    from faice.engines.slurm.worker import Worker
    from faice.runtime.docker import owner_token

    image, prefix = podman_leftovers
    dead = subprocess.Popen(["true"])
    dead.wait()
    podman_container(image, f"{prefix}dead", "b1", owner_token(dead.pid).rsplit(":", 1)[0] + ":1")
    podman_container(image, f"{prefix}alive", "b2", owner_token())
    submission = tmp_path / ".faice" / "s1"
    submission.mkdir(parents=True)
    rundir.write_json(submission / rundir.PACK_FILE, {"workers": 2, "batchesPerWorker": 1, "leaseSeconds": 60,
                                                      "pollInterval": 1, "runtime": "podman"})
    rundir.write_json(submission / "options.json", {"run_id": "r1"})
    worker = Worker(submission, {})
    worker._remove_orphans()
    assert podman_names(prefix) == {f"{prefix}alive"}
    assert "docker" not in worker.host._runtimes  # Docker was never asked


def test_agency_cleanup_ends_the_batchs_charliecloud_process_group(registry, charliecloud, image_cache, tmp_path):
    from faice.agency.runner import PipelineRunner
    from faice.runtime.charliecloud import CharliecloudRuntime
    from faice.runtime.containers import ContainerSpec

    runtime = CharliecloudRuntime()
    image, _ = runtime.ensure_image(registry.image, auth={"username": registry.user, "password": registry.password})
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    spec = ContainerSpec(image=image.id, command=["sleep", "300"], run_id="r1", batch_id="b-recovered",
                         binds=[(str(outputs), "/cc/outputs", "rw")], name="faice-b-recovered-0a1b2c3d")
    handle = runtime.create(spec)
    try:
        runtime.start(handle)
        process = runtime._batch(handle).process
        assert process is not None and runtime.wait(handle, 0.5) is None  # running
        # The restarted server: another Host, another runtime object, only the batch id known.
        PipelineRunner().cleanup("b-recovered", "charliecloud")
        assert runtime.wait(handle, 10) == 137
        assert not (Path(os.environ.get("TMPDIR", "/tmp")) / f"faice-groups-{os.geteuid()}" / str(process.pid)).exists()
    finally:
        runtime.remove(handle)


def test_a_batch_left_nothing_in_a_runtime_that_is_not_there(tmp_path, monkeypatch):
    """No Podman program (an agency host without it): the server starts, nothing to remove."""
    from faice.agency.slurm_runner import remove_batch_leftovers

    monkeypatch.setenv("PATH", str(tmp_path))
    started = time.monotonic()
    assert remove_batch_leftovers("b-recovered", "podman") == []
    assert time.monotonic() - started < 10
