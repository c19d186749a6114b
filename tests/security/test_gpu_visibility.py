"""A batch that asked for no GPU sees none (issue 20, review 2.1).

On GPU servers Docker's default runtime is often nvidia, and images built on nvidia/cuda
carry ``ENV NVIDIA_VISIBLE_DEVICES=all``: its hook would hand such a batch every GPU, outside
faice's allocator (on the agency: other users' devices). faice sets the variable to ``void``
for batches without GPUs. No GPU and no nvidia runtime exist here, so the test checks what
the hook would read: the environment of the real container of a real batch, whose image
says ``all``.
"""

from __future__ import annotations

import json
import uuid

import pytest

from faice.pipeline.options import RunOptions
from faice.pipeline.run import run_experiment
from faice.red.prepare import load_experiment

pytestmark = pytest.mark.docker


@pytest.fixture
def cuda_like_image(docker_client, test_image, test_labels):
    """The test image with the ENV line of every nvidia/cuda image."""
    container = docker_client.api.create_container(test_image, command=["true"], labels=test_labels)
    tag = f"gpu-all-{uuid.uuid4().hex[:8]}"
    try:
        docker_client.api.commit(container["Id"], repository="faice-test/cuda-like", tag=tag,
                                 changes=["ENV NVIDIA_VISIBLE_DEVICES=all"])
    finally:
        docker_client.api.remove_container(container["Id"], force=True)
    ref = f"faice-test/cuda-like:{tag}"
    yield ref
    docker_client.images.remove(ref, force=True)


def test_a_batch_without_gpus_never_inherits_the_image_s_gpu_visibility(tmp_path, docker_client, cuda_like_image):
    image_env = docker_client.images.get(cuda_like_image).attrs["Config"]["Env"]
    assert "NVIDIA_VISIBLE_DEVICES=all" in image_env
    red = {
        "redVersion": "9",
        "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["sh", "-c"],
                "inputs": {"script": {"type": "string", "inputBinding": {"position": 0}}}, "outputs": {}},
        "inputs": {"script": 'echo "seen=$NVIDIA_VISIBLE_DEVICES"'},
        "outputs": {},
        "container": {"engine": "docker", "settings": {"image": {"url": cuda_like_image}}},
        "execution": {"engine": "ccfaice", "settings": {}},
    }
    path = tmp_path / "nogpu.red.json"
    path.write_text(json.dumps(red))
    summary = run_experiment(load_experiment(str(path)), RunOptions(), tmp_path / "run")
    assert summary.exit_code == 0, summary.to_dict()
    (entry,) = summary.to_dict()["batches"]
    stdout = (tmp_path / "run" / "batches" / entry["id"] / "stdout.txt").read_text()
    assert stdout.strip() == "seen=void"
