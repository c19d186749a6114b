"""Outputs written by the image's user are given back to the user running faice, without
running any tool of the user's image (upstream ran ``chown`` in it: images without one failed,
and the failure was ignored).

The test machine runs as root; the non-root path is taken by telling the runtime that the
caller is uid/gid 4321 (``DockerRuntime(owner=…)``), which is exactly the decision a
non-root faice makes. Its image has no files at all (``docker import`` of an empty tar), so a
tool of the image cannot have done the work.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import tracemalloc
import uuid

import pytest
from engine_helpers import sh_red

from faice.pipeline.options import RunOptions
from faice.pipeline.run import run_experiment
from faice.red.prepare import load_experiment
from faice.runtime.containers import ContainerError
from faice.runtime.docker import DockerRuntime

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def empty_image(docker_client):
    """An image with an empty root file system: no chown, no shell, nothing to run."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w"):
        pass
    ref = f"faice-test/empty:{uuid.uuid4().hex[:8]}"
    repository, tag = ref.split(":")
    docker_client.api.import_image_from_data(buffer.getvalue(), repository=repository, tag=tag)
    yield ref
    docker_client.images.remove(ref, force=True)


def _foreign_tree(root):
    """What a container running as another user leaves behind: a private dir and files."""
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "secret.txt").write_text("only the image user may read this")
    (root / "top.txt").write_text("result")
    os.symlink("top.txt", root / "link")
    os.chmod(root / "sub" / "secret.txt", 0o600)
    os.chmod(root / "sub", 0o700)
    for path in (root / "sub" / "secret.txt", root / "sub", root / "top.txt"):
        os.chown(path, 1234, 1234)
    os.lchown(root / "link", 1234, 1234)


def _owners(root):
    return {str(p.relative_to(root)): (os.lstat(p).st_uid, os.lstat(p).st_gid) for p in root.rglob("*")}


def test_non_root_caller_gets_files_back_without_running_the_image(tmp_path, docker_client, empty_image):
    outputs = tmp_path / "outputs"
    _foreign_tree(outputs)
    run_id = f"reclaim-{uuid.uuid4().hex[:8]}"
    DockerRuntime(docker_client, owner=(4321, 4321)).reclaim(outputs, empty_image, run_id)
    assert set(_owners(outputs).values()) == {(4321, 4321)}, _owners(outputs)
    assert (outputs / "sub" / "secret.txt").read_text() == "only the image user may read this"
    assert os.stat(outputs / "sub" / "secret.txt").st_mode & 0o777 == 0o600  # modes kept
    assert os.readlink(outputs / "link") == "top.txt"
    mine = docker_client.containers.list(all=True, filters={"label": f"org.faice.run={run_id}"}, ignore_removed=True)
    assert mine == []  # its helper container is gone


def test_large_outputs_are_reclaimed_in_one_stream_without_temp_files(tmp_path, docker_client, empty_image,
                                                                      monkeypatch):
    """A 64 MiB output goes back through Docker once: nothing is written to $TMPDIR (it does
    not even exist here) and faice's memory stays far below the file's size."""
    outputs = tmp_path / "outputs"
    _foreign_tree(outputs)
    block = os.urandom(1 << 20)
    with open(outputs / "model.bin", "wb") as handle:
        for _ in range(64):
            handle.write(block)
    os.chown(outputs / "model.bin", 1234, 1234)
    digest = hashlib.sha256((outputs / "model.bin").read_bytes()).hexdigest()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-tmpdir"))  # every temp file would fail
    tracemalloc.start()
    try:
        DockerRuntime(docker_client, owner=(4321, 4321)).reclaim(outputs, empty_image, f"reclaim-{uuid.uuid4().hex[:8]}")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert set(_owners(outputs).values()) == {(4321, 4321)}
    assert hashlib.sha256((outputs / "model.bin").read_bytes()).hexdigest() == digest
    assert peak < 16 * 2**20, f"{peak / 2**20:.1f} MiB held for a 64 MiB file"


def test_root_caller_chowns_on_the_host(tmp_path, docker_client, empty_image):
    outputs = tmp_path / "outputs"
    _foreign_tree(outputs)
    DockerRuntime(docker_client, owner=(0, 0)).reclaim(outputs, empty_image, "reclaim-test")
    assert set(_owners(outputs).values()) == {(0, 0)}


def test_a_failed_reclaim_is_an_error_not_ignored(tmp_path, docker_client):
    outputs = tmp_path / "outputs"
    _foreign_tree(outputs)
    # The image does not exist: the helper container cannot be created.
    with pytest.raises(ContainerError, match="Docker"):
        DockerRuntime(docker_client, owner=(4321, 4321)).reclaim(outputs, "faice-test/absent:none", "x")


def test_a_batch_of_a_non_root_image_leaves_outputs_owned_by_the_caller(tmp_path, user_image):
    red = sh_red(tmp_path / "r.json", "mkdir -p d && echo hi > d/f.txt && chmod 700 d && id -u", user_image,
                 outputs={"d": {"type": "Directory", "outputBinding": {"glob": "d"}}})
    summary = run_experiment(load_experiment(str(red)), RunOptions(), tmp_path / "run")
    assert summary.exit_code == 0, summary.to_dict()
    (entry,) = summary.to_dict()["batches"]
    bdir = tmp_path / "run" / "batches" / entry["id"]
    assert (bdir / "stdout.txt").read_text().strip() != "0"  # really written by another user
    assert set(_owners(bdir / "outputs").values()) == {(os.geteuid(), os.getegid())}
    assert json.loads((bdir / "result.json").read_text())["state"] == "succeeded"
