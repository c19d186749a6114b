"""``file``: files and directories on this host (a faice extension; access ``{path}``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from faice.connectors import Connector, ConnectorFailure, Listing, Progress, listed_dirs, listed_files
from faice.connectors.trees import output_tree


def _host_path(access) -> Path:
    return Path(os.path.expanduser(str(access["path"]))).absolute()


class FileConnector(Connector):
    """Copies between a host path and the staging area (inputs) or to a host path (outputs)."""

    names = ("file",)
    access_schema = {
        "type": "object",
        "properties": {"path": {"type": "string", "minLength": 1}},
        "required": ["path"],
        "additionalProperties": False,
    }

    def validate(self, access, operation, listing=None):
        path = _host_path(access)
        if operation == "receive-file":
            if not path.is_file():
                raise ConnectorFailure(f"host file {path} does not exist" if not path.exists()
                                       else f"host path {path} is not a file")
            if not os.access(path, os.R_OK):
                raise ConnectorFailure(f"host file {path} is not readable")
        elif operation == "receive-dir":
            if not path.is_dir():
                raise ConnectorFailure(f"host directory {path} does not exist" if not path.exists()
                                       else f"host path {path} is not a directory")
            for rel, _item in listed_files(listing):
                if not (path / rel).is_file():
                    raise ConnectorFailure(f"listed file {rel!r} does not exist in {path}")
        elif operation == "send-file":
            if path.is_dir():
                raise ConnectorFailure(f"host path {path} is a directory; refusing to replace it with a file")
            _check_creatable(path.parent)
        elif operation == "send-dir":
            if path.exists() and not path.is_dir():
                raise ConnectorFailure(f"host path {path} is a file; refusing to replace it with a directory")
            _check_creatable(path.parent)

    def receive_file(self, access, dest: Path, progress: Progress) -> None:
        src = _host_path(access)
        self.validate(access, "receive-file")
        progress.expect(src.stat().st_size)
        shutil.copyfile(src, dest)
        progress.advance(dest.stat().st_size)

    def receive_dir(self, access, dest: Path, listing: Listing | None, progress: Progress) -> None:
        src = _host_path(access)
        self.validate(access, "receive-dir", listing)
        _copy_dir(src, dest, listing, progress)

    def send_file(self, access, src: Path, progress: Progress) -> None:
        dest = _host_path(access)
        self.validate(access, "send-file")
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f".{dest.name}.faice-part")
        try:
            shutil.copyfile(src, part)
            os.replace(part, dest)  # never a half-written file under the final name
        finally:
            part.unlink(missing_ok=True)
        progress.advance(dest.stat().st_size)

    def send_dir(self, access, src: Path, listing: Listing | None, progress: Progress) -> None:
        dest = _host_path(access)
        self.validate(access, "send-dir")
        dest.mkdir(parents=True, exist_ok=True)
        tree = output_tree(src, listing)  # links out of the output are refused, links inside copied
        for rel in tree.dirs:
            (dest / rel).mkdir(parents=True, exist_ok=True)
        for item in tree.files:
            target = dest / item.rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.path, target)
            progress.advance(item.size)


def _check_creatable(directory: Path) -> None:
    """The nearest existing ancestor must be a writable directory."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConnectorFailure(f"host path {probe} is not a directory")
    if not os.access(probe, os.W_OK):
        raise ConnectorFailure(f"host directory {probe} is not writable")


def _copy_dir(src: Path, dest: Path, listing: Listing | None, progress: Progress) -> None:
    """Copy a whole tree, or only the listed entries when a listing is given."""
    if listing is None:
        shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
        progress.advance(sum(p.stat().st_size for p in dest.rglob("*") if p.is_file() and not p.is_symlink()))
        return
    for rel in listed_dirs(listing):
        (dest / rel).mkdir(parents=True, exist_ok=True)
    for rel, _item in listed_files(listing):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, target)
        progress.advance(target.stat().st_size)
