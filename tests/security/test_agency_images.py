"""Private images on an agency (issue 19): an image one user pulled with their registry
credentials never runs for a user the registry would refuse, and the server's own stored
registry login (``~/.docker/config.json``) never pulls for anyone. Against a real
``faice agency serve`` and a real registry (Debian's ``docker-registry``) on 127.0.0.1 with
TLS and htpasswd, started here and removed afterwards (Docker treats 127.0.0.0/8 registries
as insecure, so the self-signed certificate needs no trust store)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass

import agency_reds as reds
import pytest
from agency_helpers import free_port

REGISTRY = shutil.which("docker-registry") or shutil.which("registry")
USER, PASSWORD = "team-a", "team-a-registry-pw"


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    proc: subprocess.Popen

    def auth(self, password: str = PASSWORD) -> dict[str, str]:
        return {"username": USER, "password": password}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    if REGISTRY is None:
        pytest.skip("no registry program (Debian package docker-registry)")
    base = tmp_path_factory.mktemp("registry")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(base / "key.pem"),
                    "-out", str(base / "cert.pem")], check=True, capture_output=True)
    htpasswd = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True, capture_output=True, text=True)
    (base / "htpasswd").write_text(htpasswd.stdout)
    port = free_port()
    (base / "config.yml").write_text(json.dumps({
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(base / "data")}},
        "http": {"addr": f"127.0.0.1:{port}", "tls": {"certificate": str(base / "cert.pem"), "key": str(base / "key.pem")}},
        "auth": {"htpasswd": {"realm": "faice-test", "path": str(base / "htpasswd")}},
    }))
    with open(base / "registry.log", "wb") as log:
        proc = subprocess.Popen([REGISTRY, "serve", str(base / "config.yml")], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, (base / "registry.log").read_text()
                time.sleep(0.1)
        yield Registry(f"127.0.0.1:{port}", proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def private_image(registry, docker_client, tmp_path):
    """A tiny image (a static program, FROM scratch) pushed to the registry as team-a's and
    then removed here: the agency must pull it."""
    shutil.copy("/sbin/ldconfig", tmp_path / "ldconfig")
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY ldconfig /ldconfig\n")
    ref = f"{registry.host}/team-a/model-{uuid.uuid4().hex[:8]}:1"
    docker_client.images.build(path=str(tmp_path), tag=ref, labels={"org.faice.test": "1"}, rm=True)
    for event in docker_client.api.push(ref.rsplit(":", 1)[0], tag="1", stream=True, decode=True,
                                        auth_config=registry.auth()):
        assert "error" not in event, event
    docker_client.images.remove(ref, force=True)
    yield ref
    try:
        docker_client.images.remove(ref, force=True)
    except Exception:
        pass


def _red(image: str, auth: dict[str, str] | None) -> dict:
    red = reds.minimal(command="/ldconfig", value="--version", image=image)
    if auth is not None:
        red["container"]["settings"]["image"]["auth"] = auth
    return red


def _run(server, red: dict, user: str) -> dict:
    (batch_id,) = server.batch_ids(server.submit(red, user), user)
    return server.wait_state(batch_id, user=user, timeout=120)


def _reason(batch: dict) -> str:
    return "\n".join(str(entry.get("debugInfo") or "") for entry in batch["history"])


def test_an_image_pulled_for_one_user_never_runs_for_a_user_the_registry_refuses(make_agency, private_image,
                                                                                  registry, docker_client):
    server = make_agency("--parallel", "2")
    assert _run(server, _red(private_image, registry.auth()), "alice")["state"] == "succeeded"
    assert docker_client.images.get(private_image).attrs["RepoDigests"]  # pulled: here for everyone now
    for auth in (None, registry.auth("wrong-password")):
        batch = _run(server, _red(private_image, auth), "bob")
        assert batch["state"] == "failed", batch
        assert "registry that does not let this batch's credentials" in _reason(batch), batch
        assert PASSWORD not in json.dumps(batch) and "wrong-password" not in json.dumps(batch)
    assert _run(server, _red(private_image, registry.auth()), "alice")["state"] == "succeeded"


def test_the_servers_stored_registry_login_never_pulls_for_a_user(make_agency, private_image, registry,
                                                                 docker_client, tmp_path):
    home = tmp_path / "server-home"
    (home / ".docker").mkdir(parents=True)
    login = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (home / ".docker" / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": login}}}))
    env = {**{k: v for k, v in os.environ.items() if k != "DOCKER_CONFIG"}, "HOME": str(home)}
    server = make_agency("--parallel", "2", env=env)
    batch = _run(server, _red(private_image, None), "bob")
    assert batch["state"] == "failed", batch
    assert "pulling" in _reason(batch), batch
    with pytest.raises(Exception, match="No such image|not found"):
        docker_client.images.get(private_image)


def test_images_built_on_the_server_run_without_a_registry(make_agency, test_image):
    """An image the admin built or loaded (no registry digest) is not asked about anywhere."""
    server = make_agency("--parallel", "2")
    assert _run(server, reds.minimal(), "alice")["state"] == "succeeded"
