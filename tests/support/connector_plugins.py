"""A connector plugin installed as pip would leave it (a module and a ``.dist-info`` with a
``faice.connectors.v1`` entry point) in a directory a child process puts on its path."""

from __future__ import annotations

import os
from pathlib import Path


def install_connector(site: Path, name: str, source: str, class_name: str) -> None:
    """``source`` as module ``{name}_connector`` in ``site``, distribution ``faice-{name}-connector``
    0.1, whose entry point ``name`` is its class ``class_name``."""
    (site / f"{name}_connector.py").write_text(source)
    info = site / f"faice_{name}_connector-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: faice-{name}-connector\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[faice.connectors.v1]\n{name} = {name}_connector:{class_name}\n")


def environment_with(site: Path) -> dict[str, str]:
    """This process's environment with ``site`` first on PYTHONPATH, for a child that should
    find the plugins installed there."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
