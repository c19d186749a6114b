"""The test helpers survive containers that vanish while they look at them: a container is
removed for real between the listing and the inspection (or removal) of it."""

from __future__ import annotations

import uuid

import docker
import pytest
from docker_helpers import labelled_containers, remove_labelled

try:
    from tests import infra as _infra
except ImportError:  # tests/ is on sys.path
    import infra as _infra

pytestmark = pytest.mark.docker


@pytest.fixture
def two_containers(docker_client, test_image):
    label = f"org.faice.test.vanish={uuid.uuid4().hex[:8]}"
    key, value = label.split("=")
    made = [docker_client.containers.create(test_image, ["true"], labels=_infra.container_labels(**{key: value}))
            for _ in range(2)]
    yield label, made
    for container in made:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass


def _vanish_before(monkeypatch, client, method: str, victim: str) -> None:
    """Make ``client.api.<method>`` remove ``victim`` for real just before it runs."""
    original = getattr(client.api, method)
    remove = client.api.remove_container

    def racing(container, *args, **kwargs):
        if container == victim:
            remove(victim, force=True)
        return original(container, *args, **kwargs)

    monkeypatch.setattr(client.api, method, racing)


def test_listing_skips_a_container_removed_before_its_inspection(docker_client, two_containers, monkeypatch):
    label, (gone, kept) = two_containers
    _vanish_before(monkeypatch, docker_client, "inspect_container", gone.id)
    assert [c.id for c in labelled_containers(docker_client, label)] == [kept.id]


def test_removing_tolerates_a_container_already_gone(docker_client, two_containers, monkeypatch):
    label, (gone, kept) = two_containers
    _vanish_before(monkeypatch, docker_client, "remove_container", gone.id)
    remove_labelled(docker_client, label)
    monkeypatch.undo()
    assert labelled_containers(docker_client, label) == []
