"""Docker helpers shared by the test folders: listing and removing labelled containers that
may vanish while being looked at (a batch finishing, faice cleaning up, a parallel test).

``containers.list`` inspects each container it found; one removed in between raised
``docker.errors.NotFound`` and failed the test (seen on a fresh clone)."""

from __future__ import annotations

from typing import Any


def labelled_containers(client: Any, label: str) -> list:
    """All containers (any state) carrying ``label`` (``key`` or ``key=value``), skipping
    those that disappear while being listed."""
    return client.containers.list(all=True, filters={"label": label}, ignore_removed=True)


def remove_labelled(client: Any, label: str) -> None:
    """Force-remove the containers carrying ``label``; gone already is fine."""
    import docker

    for container in labelled_containers(client, label):
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:  # 409: its removal is already in progress
            if exc.status_code != 409:
                raise
