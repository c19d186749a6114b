"""Images a shared host (an agency) pulled with a batch's own registry credentials.

Docker keeps one image store per host: once user A's private image is pulled, any batch
naming it (or its id) would find it present. The record kept here says which images came
with credentials, so that :func:`faice.runtime.docker.ensure_image` asks the registry
again — with the new batch's own credentials — before lending one of them. Images the host
built, loaded or pulled anonymously are not recorded: no registry login protects them.

The record is a JSON list of image ids, changed under an exclusive ``flock`` that a pull
with credentials holds until its id is written (threads and processes of the host alike),
so a batch never sees such an image present but not yet recorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from faice.files import atomic_write_json, read_json


class PrivateImages:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def holds(self, image_id: str) -> bool:
        """Whether ``image_id`` came with a batch's credentials (call under :meth:`locked`)."""
        return image_id in self._ids()

    def add(self, image_id: str) -> None:
        """Record ``image_id`` (call under :meth:`locked`)."""
        ids = self._ids()
        if image_id not in ids:
            atomic_write_json(self.path, sorted(ids | {image_id}), mode=0o600)

    def _ids(self) -> set[str]:
        data = read_json(self.path)
        return {i for i in data if isinstance(i, str)} if isinstance(data, list) else set()
