"""Docker helpers shared by the test folders: listing and removing labelled containers that
may vanish while being looked at (a batch finishing, faice cleaning up, a parallel test).

``containers.list`` inspects each container it found; one removed in between raised
``docker.errors.NotFound`` and failed the test (seen on a fresh clone)."""

from __future__ import annotations

import subprocess
from pathlib import Path
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


HASH_LABEL = "org.faice.example.hash"


def build_example_image(client: Any, context: Path, tag: str, content_hash: str, base: str) -> str:
    """``tag`` built from ``context`` on ``base`` as the examples' READMEs build it, labelled
    as a test image; rebuilt only when ``content_hash`` (of its sources) changed."""
    import docker

    try:
        if client.images.get(tag).labels.get(HASH_LABEL) == content_hash:
            return tag
    except docker.errors.ImageNotFound:
        pass
    build = subprocess.run(
        ["docker", "build", "--network", "host", "--build-arg", f"BASE={base}",
         "--label", "org.faice.test=1", "--label", f"{HASH_LABEL}={content_hash}", "-t", tag, "."],
        cwd=context, capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, f"docker build failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    return tag
