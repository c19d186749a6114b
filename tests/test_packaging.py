"""Packaging: every package directory is listed in setup.cfg and the wheel ships the schemas."""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _configured_packages() -> tuple[set[str], dict[str, str]]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    packages = {p.strip() for p in config["options"]["packages"].split() if p.strip()}
    mapping = {}
    for line in config["options"]["package_dir"].strip().splitlines():
        name, _, directory = line.partition("=")
        mapping[name.strip()] = directory.strip()
    return packages, mapping


def _package_dirs(base: Path, prefix: str) -> set[str]:
    found = set()
    for init in base.rglob("__init__.py"):
        relative = init.parent.relative_to(base)
        found.add(".".join((prefix, *relative.parts)) if relative.parts else prefix)
    return found


def test_every_package_directory_is_listed_in_setup_cfg():
    packages, mapping = _configured_packages()
    on_disk = _package_dirs(ROOT / "faice", "faice")
    for name, directory in mapping.items():
        on_disk -= {p for p in on_disk if p == name or p.startswith(name + ".")}
        on_disk |= _package_dirs(ROOT / directory, name)
    assert on_disk == packages


@pytest.mark.slow
def test_wheel_contains_schemas_and_connectors(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("faice-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("faice/schemas/") and n.endswith(".json") for n in names)
    assert "faice_connectors/__init__.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[faice.connectors.v1]" in text and "faice = faice.cli:console" in text
