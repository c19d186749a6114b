"""The Machine Learning Guide, end to end, exactly as its README tells users to run it.

Real pieces only: the example image is built from examples/ml-guide/Dockerfile, the
dataset is made by make-dataset.py inside it, the test sshd (127.0.0.1:2222) plays the data
server, and ``faice exec local.red.yml --variables vars.yml`` runs the 2-batch
learning-rate sweep on this host's Docker engine. No GPU here: local.red.yml needs none.

The only change to the example is the server directory (``ml-guide/`` → a unique one), so
that concurrent test runs cannot see each other's files.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from helpers_examples import EXAMPLES, explain, faice, run_in_image

pytestmark = [pytest.mark.docker, pytest.mark.ssh]

ML_GUIDE = EXAMPLES / "ml-guide"
LEARNING_RATES = ("0.0001", "0.001")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class Server:
    """The guide's directory on the SSH server, seen from this host's disk."""

    def __init__(self, ssh_server, dataset: Path) -> None:
        self.ssh = ssh_server
        self.name = f"ml-guide-test-{uuid.uuid4().hex[:8]}"
        self.root = Path(ssh_server.home) / self.name
        owner = pwd.getpwnam(ssh_server.user)
        shutil.copytree(dataset, self.root / "pcam")
        (self.root / "logs").mkdir()
        for path in [self.root, *self.root.rglob("*")]:
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def log(self, index: int, rate: str) -> Path:
        return self.root / "logs" / f"training_{index}_lr{rate}.log"

    def weights(self, rate: str) -> Path:
        return self.root / "weights" / f"weights_lr{rate}.h5"

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def server(ssh_server, pcam_dataset):
    made = Server(ssh_server, pcam_dataset)
    yield made
    made.remove()


def _example_copy(tmp_path: Path, server: Server, extra_inputs: str = "") -> Path:
    """local.red.yml with the server directory made unique, and ``extra_inputs`` (YAML lines) added."""
    text = (ML_GUIDE / "local.red.yml").read_text()
    text = text.replace("Path: ml-guide/", f"Path: {server.name}/").replace('Path: "ml-guide/', f'Path: "{server.name}/')
    assert text.count(server.name) == 3
    if extra_inputs:
        text = text.replace("  epochs: 3\n", "  epochs: 3\n" + extra_inputs, 1)
    red = tmp_path / "local.red.yml"
    red.write_text(text)
    return red


def _vars_file(tmp_path: Path, ssh_server) -> Path:
    """README step 4: vars.yml with the server's address and credentials."""
    path = tmp_path / "vars.yml"
    path.write_text(
        f"ssh_host: {ssh_server.host}\nssh_port: {ssh_server.port}\n"
        f"ssh_username: {ssh_server.user}\nssh_password: {ssh_server.password}\n"
    )
    path.chmod(0o600)
    return path


def _exec_args(red: Path, variables: Path, outdir: Path) -> list[str]:
    return ["exec", str(red), "--variables", str(variables), "--non-interactive", "--disable-pull",
            "--outdir", str(outdir)]


def _env(tmp_path: Path) -> dict[str, str]:
    # A private HOME: accepting the test server's host key must not touch the real ~/.ssh.
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"HOME": str(home), "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"}


def _batch_states(outdir: Path) -> list[str]:
    run = json.loads((outdir / "run.json").read_text())
    batches = run["batches"]
    entries = list(batches.values()) if isinstance(batches, dict) else batches
    states = []
    for entry in entries:
        record = json.loads((outdir / "batches" / entry["id"] / "result.json").read_text())
        assert record["state"] == entry["state"]
        states.append(record["state"])
    return states


def _weights_attrs(image: str, folder: Path) -> dict[str, dict]:
    script = (
        "import h5py, json, glob\n"
        "print(json.dumps({p: {k: float(v) for k, v in h5py.File(p, 'r').attrs.items()} for p in sorted(glob.glob('*.h5'))}))"
    )
    return json.loads(run_in_image(image, folder, "python3", "-c", script))


def _no_leftovers(docker_client, server: Server, outdir: Path) -> None:
    """Nothing of the run is left: no container with its run label, no SSHFS mount."""
    run_id = json.loads((outdir / "run.json").read_text())["runId"]
    assert docker_client.containers.list(all=True, filters={"label": f"org.faice.run={run_id}"}, ignore_removed=True) == []
    assert server.name not in Path("/proc/self/mounts").read_text(), "an SSHFS mount of the run is still there"


def test_ml_guide_sweep_runs_end_to_end(tmp_path, server, ssh_server, ml_guide_image, docker_client):
    red = _example_copy(tmp_path, server)
    outdir = tmp_path / "run"
    result = faice(*_exec_args(red, _vars_file(tmp_path, ssh_server), outdir), env=_env(tmp_path), timeout=600)
    assert result.returncode == 0, explain(result)

    # Both batches succeeded, in the run summary and in their records.
    assert _batch_states(outdir) == ["succeeded", "succeeded"]

    # The live logs went through the writable SSHFS mount: one file per batch, every epoch.
    for index, rate in enumerate(LEARNING_RATES):
        lines = server.log(index, rate).read_text().splitlines()
        assert f"learning_rate={rate}" in lines[0]
        assert [line.split()[0] for line in lines[1:4]] == ["epoch=1", "epoch=2", "epoch=3"]
        assert lines[-1] == "# done weights=weights.h5"

    # The weights came back over SFTP, each from the batch with its own learning rate.
    for rate in LEARNING_RATES:
        assert server.weights(rate).read_bytes()[:8] == HDF5_MAGIC
    attrs = _weights_attrs(ml_guide_image, server.root / "weights")
    assert {name: a["learning_rate"] for name, a in attrs.items()} == {
        f"weights_lr{rate}.h5": float(rate) for rate in LEARNING_RATES
    }
    # The dataset was mounted read-only: the training could not have changed it.
    assert sorted(p.name for p in (server.root / "pcam").iterdir())[0].endswith("_train_x.h5")

    # The SSH password appears nowhere: not in the output, not in the run directory.
    secret = ssh_server.password
    assert secret not in result.stdout and secret not in result.stderr
    for path in outdir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"password leaked into {path}"
    _no_leftovers(docker_client, server, outdir)


def test_ml_guide_log_is_visible_on_the_server_while_training_runs(tmp_path, server, ssh_server, ml_guide_image,
                                                                    docker_client):
    """`tail -f` on the server shows epochs as they finish: a line arrives before the batch ends."""
    red = _example_copy(tmp_path, server, "  min_epoch_seconds: 3\n")
    outdir = tmp_path / "run"
    env = dict(os.environ, **_env(tmp_path))
    process = subprocess.Popen(
        [sys.executable, "-m", "faice", *_exec_args(red, _vars_file(tmp_path, ssh_server), outdir)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )
    seen_while_running = False
    try:
        deadline = time.monotonic() + 300
        log = server.log(1, "0.001")
        while process.poll() is None and time.monotonic() < deadline:
            lines = log.read_text().splitlines() if log.exists() else []
            if any(line.startswith("epoch=1 ") for line in lines):
                # Epoch 1 is on the server, the batch has at least two 3 s epochs to go.
                seen_while_running = not any(line.startswith("# done") for line in lines) and process.poll() is None
                break
            time.sleep(0.2)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.terminate()
            process.communicate(timeout=60)
    assert process.returncode == 0, f"exit {process.returncode}\n{stdout}\n{stderr}"
    assert seen_while_running, "no epoch line reached the server while the batch was running"
    assert "# done weights=weights.h5" in server.log(1, "0.001").read_text()
    _no_leftovers(docker_client, server, outdir)
