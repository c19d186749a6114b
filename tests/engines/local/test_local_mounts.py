"""``mount: true`` inputs: sshfs on the host (real sshd), bind-mounted into the container
read-only unless ``writable`` — no SYS_ADMIN, no FUSE in the image."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
from engine_helpers import read, sh_red

from faice.pipeline.options import RunOptions
from faice.pipeline.run import run_experiment
from faice.red.prepare import load_experiment

pytestmark = [pytest.mark.docker, pytest.mark.ssh]


@pytest.fixture
def remote_dir(ssh_server):
    name = f"engine-{uuid.uuid4().hex[:10]}"
    root = ssh_server.home / "data" / name
    (root / "share").mkdir(parents=True)
    (root / "share" / "dataset.txt").write_text("remote data\n")
    (root / "logs").mkdir()
    for path in (root, root / "share", root / "share" / "dataset.txt", root / "logs"):
        shutil.chown(path, ssh_server.user, ssh_server.user)
    yield name, root
    shutil.rmtree(root, ignore_errors=True)


def _ssh_mount(ssh_server, path: str, writable: bool) -> dict:
    """A Directory input that sshfs-mounts ``path`` of the test sshd (strict host key check)."""
    access = {"host": ssh_server.host, "port": ssh_server.port, "dirPath": path,
              "auth": {"username": ssh_server.user, "password": ssh_server.password},
              "hostKeyPolicy": "strict", "knownHostsFile": str(ssh_server.known_hosts)}
    if writable:
        access["writable"] = True
    return {"class": "Directory", "connector": {"command": "ssh", "mount": True, "access": access}}


def test_sshfs_mounts_are_bind_mounted_and_removed(tmp_path, ssh_server, remote_dir, docker_client, test_image):
    name, root = remote_dir
    red = sh_red(
        tmp_path / "r.json",
        'cat "$1/dataset.txt" > copy.txt; echo "live log" > "$2/run.log"; '
        'if touch "$1/x" 2>/dev/null; then exit 9; fi',
        test_image,
        extra_inputs={"data": {"type": "Directory", "inputBinding": {"position": 2}},
                      "logs": {"type": "Directory", "inputBinding": {"position": 3}}},
        outputs={"copy": {"type": "File", "outputBinding": {"glob": "copy.txt"}}},
    )
    doc = read(red)
    doc["inputs"]["data"] = _ssh_mount(ssh_server, f"data/{name}/share", writable=False)
    doc["inputs"]["logs"] = _ssh_mount(ssh_server, f"data/{name}/logs", writable=True)
    red.write_text(json.dumps(doc))

    summary = run_experiment(load_experiment(str(red)), RunOptions(), tmp_path / "run")
    assert summary.exit_code == 0, summary.to_dict()
    (entry,) = summary.to_dict()["batches"]
    bdir = tmp_path / "run" / "batches" / entry["id"]
    assert (bdir / "outputs" / "copy.txt").read_text() == "remote data\n"
    assert (root / "logs" / "run.log").read_text() == "live log\n"  # written through the writable mount
    assert not (root / "share" / "x").exists()
    assert f"faice-run-{summary.to_dict()['runId']}" not in Path("/proc/self/mounts").read_text()
    assert ssh_server.password not in (bdir / "result.json").read_text()


@pytest.mark.parametrize("writable", [True, False])
def test_a_busy_writable_mount_fails_the_batch(tmp_path, ssh_server, remote_dir, docker_client, test_image,
                                                writable):
    """A host process keeps its cwd in the mount, so the plain fusermount -u fails (EBUSY) and
    the mount is only detached lazily: for a writable mount the outputs may be lost, and the
    batch fails as a connector failure; a read-only mount is a cleanup note only."""
    import subprocess

    from faice.pipeline.events import BatchEvent

    name, _root = remote_dir
    red = sh_red(tmp_path / "r.json", 'echo "result" > "$1/result.txt"', test_image,
                 extra_inputs={"logs": {"type": "Directory", "inputBinding": {"position": 2}}})
    doc = read(red)
    if not writable:
        doc["cli"]["baseCommand"] = ["sh", "-c", 'echo "result" > result.txt']
    doc["inputs"]["logs"] = _ssh_mount(ssh_server, f"data/{name}/logs", writable)
    red.write_text(json.dumps(doc))
    holders: list[subprocess.Popen] = []

    def hold_mounts(event: BatchEvent) -> None:
        if event.phase != "run" or holders:
            return
        for line in Path("/proc/self/mounts").read_text().splitlines():
            mountpoint = line.split()[1]
            if "/mounts/" in mountpoint and line.split()[2].startswith("fuse.sshfs") and "faice-run-" in mountpoint:
                holders.append(subprocess.Popen(["sleep", "60"], cwd=mountpoint))

    try:
        summary = run_experiment(load_experiment(str(red)), RunOptions(), tmp_path / "run", on_event=hold_mounts)
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    assert holders, "the mount was never seen"
    (entry,) = summary.to_dict()["batches"]
    record = json.loads((tmp_path / "run" / "batches" / entry["id"] / "result.json").read_text())
    if writable:
        assert entry["state"] == "failed" and record["failureClass"] == "connector", record
        assert record["message"].startswith("batches[0].inputs.logs: unmounting the writable mount failed, "
                                            "files the command wrote there may be lost")
        assert "busy" in record["message"]
        assert summary.exit_code != 0
    else:
        assert entry["state"] == "succeeded", record
        assert summary.exit_code == 0


def test_a_csvlogger_file_on_a_writable_sshfs_mount_is_read_while_the_batch_runs(
        tmp_path, ssh_server, remote_dir, test_image):
    name, root = remote_dir
    # Keras' CSVLogger: a header, then one line per epoch, appended as training goes.
    red = sh_red(
        tmp_path / "r.json",
        'echo "epoch,accuracy,loss,val_accuracy,val_loss" > "$1/training.csv"; '
        'for e in 0 1 2 3; do sleep 1.2; echo "$e,0.$((5 + e)),1.$e,0.$((4 + e)),0.9" >> "$1/training.csv"; done',
        test_image,
        extra_inputs={"logs": {"type": "Directory", "inputBinding": {"position": 2}}},
    )
    doc = read(red)
    doc["inputs"]["logs"] = _ssh_mount(ssh_server, f"data/{name}/logs", writable=True)
    doc["metrics"] = {"objective": {"name": "val_accuracy", "goal": "max"},
                      "sources": [{"file": "training.csv", "in": "logs"}]}
    red.write_text(json.dumps(doc))
    events = []
    summary = run_experiment(load_experiment(str(red)), RunOptions(), tmp_path / "run", on_event=events.append)
    assert summary.exit_code == 0, summary.to_dict()
    (entry,) = summary.to_dict()["batches"]
    assert entry["metrics"]["final"] == {"accuracy": 0.8, "loss": 1.3, "val_accuracy": 0.7, "val_loss": 0.9}
    live = [e.metric["value"] for e in events if e.metric and e.state == "running"]
    assert live and live[0] < 0.7  # seen while the batch ran, before its last epoch
    series = read(tmp_path / "run" / "batches" / entry["id"] / "metrics.json")["series"]["val_accuracy"]
    assert series == [[0, 0.4], [1, 0.5], [2, 0.6], [3, 0.7]]
