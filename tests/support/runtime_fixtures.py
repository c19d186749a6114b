"""Fixtures of the command-line runtimes (imported by tests/runtime/conftest.py, the
behavioural suite and the security tests): the loopback registry every runtime pulls from,
Podman (Debian's 4.3) and Charliecloud (0.31), and a fresh image cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from runtime_helpers import Registry


def unavailable(what: str) -> None:
    """Skip, or fail where the infrastructure is required (as tests/conftest.py does)."""
    message = f"test infrastructure unavailable: {what}"
    if os.environ.get("FAICE_TEST_INFRA") == "required":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def registry(infra) -> Registry:
    values = {k: v for k, v in infra.items() if k.startswith("REGISTRY")}
    if not values:  # env.json written by an infra.sh without the registry: its own description
        own = Path(infra.get("INFRA_DIR") or os.environ.get("FAICE_INFRA_DIR", "/tmp/faice-infra")) / "registry" / "env.json"
        if own.is_file():
            values = {k.removeprefix("FAICE_TEST_"): v for k, v in json.loads(own.read_text()).items()}
    if not values.get("REGISTRY"):
        unavailable("the loopback registry (FAICE_TEST_REGISTRY): run scripts/infra.sh up")
    found = Registry(values["REGISTRY"], values["REGISTRY_USER"], values["REGISTRY_PASSWORD"],
                     Path(values["REGISTRY_LOG"]), values["REGISTRY_IMAGE"])
    if not found.answers():
        unavailable(f"the registry does not answer on {found.host}")
    return found


@pytest.fixture(scope="session")
def podman(registry) -> str:
    if shutil.which("podman") is None:
        unavailable("podman is not installed (scripts/infra.sh up installs it)")
    probe = subprocess.run(["podman", "info"], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        unavailable(f"podman does not work: {probe.stderr.strip()[-300:]}")
    return "podman"


@pytest.fixture(scope="session")
def charliecloud(registry) -> str:
    if shutil.which("ch-run") is None or shutil.which("ch-image") is None:
        unavailable("Charliecloud is not installed (scripts/infra.sh up installs it)")
    return "charliecloud"


@pytest.fixture
def image_cache(tmp_path, monkeypatch) -> Path:
    """A fresh image cache for this test (faice subprocesses inherit it)."""
    cache = tmp_path / "image-cache"
    monkeypatch.setenv("FAICE_IMAGE_CACHE", str(cache))
    return cache
