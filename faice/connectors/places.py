"""Where a RED document names connectors, and what each one is asked to do there.

The one walker over a RED document's connectors: ``faice validate`` (schema and capability
checks, sweep values included), the connector policy (``--policy``, the agency) and the
run's plan (the access probes before anything runs) all read the same places, so a
connector that one of them sees cannot slip past another.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from faice.errors import KeyPath

KINDS = ("File", "Directory")


@dataclass(frozen=True)
class ConnectorPlace:
    """A File/Directory value with a ``connector``: where it is and how it is used."""

    path: KeyPath  # of the value (the list item's index included)
    item: dict[str, Any]
    section: str  # inputs | outputs
    cli_type: Any  # the cli input's or output's type, when known

    @property
    def connector(self) -> dict[str, Any]:
        return self.item["connector"]

    @property
    def operation(self) -> str:
        return operation(self.section, self.item, self.cli_type)


def operation_name(direction: str, kind: str, *, mount: bool = False) -> str:
    """``receive-file``, ``send-dir``, ``mount-dir``…: a connector capability."""
    if kind not in KINDS:
        raise ValueError(f"kind must be 'File' or 'Directory', not {kind!r}")
    if mount and direction == "receive" and kind == "Directory":
        return "mount-dir"
    return f"{direction}-{'file' if kind == 'File' else 'dir'}"


def operation(section: str, item: dict[str, Any], cli_type: Any) -> str:
    """The operation of a RED value: an output is sent as its cli type says (else its
    ``class``); an input is received as its ``class`` says (else its cli type), and a
    Directory with ``connector.mount: true`` is mounted."""
    declared = cli_type.rstrip("?").removesuffix("[]") if isinstance(cli_type, str) else None
    declared = declared if declared in KINDS else None
    given = item.get("class") if item.get("class") in KINDS else None
    if section == "outputs":
        return operation_name("send", declared or given or "File")
    connector = item.get("connector")
    mount = isinstance(connector, dict) and connector.get("mount") is True
    return operation_name("receive", given or declared or "File", mount=mount)


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def connector_places(data: dict[str, Any], types: dict[str, dict[str, Any]] | None = None
                     ) -> Iterator[ConnectorPlace]:
    """Every connector of a RED document (or of one batch's ``{inputs, outputs}``): in its
    inputs and outputs, each batch's, and the values of its sweep. ``types``: the cli types
    by section and name (default: from the document's ``cli``)."""
    if types is None:
        cli = _mapping(data.get("cli"))
        types = {section: {n: _mapping(s).get("type") for n, s in _mapping(cli.get(section)).items()}
                 for section in ("inputs", "outputs")}
    inputs, outputs = types.get("inputs") or {}, types.get("outputs") or {}
    batches = data.get("batches")
    parts: list[tuple[KeyPath, Any]] = (
        [(("batches", i), b) for i, b in enumerate(batches)] if isinstance(batches, list) else [((), data)]
    )
    for prefix, batch in parts:
        for section, known in (("inputs", inputs), ("outputs", outputs)):
            for name, value in _mapping(_mapping(batch).get(section)).items():
                yield from _items(prefix + (section, name), value, section, known.get(name))
    sweep = _mapping(data.get("sweep"))
    for block in ("grid", "zip"):
        for name, values in _mapping(sweep.get(block)).items():
            if isinstance(values, list):
                for index, value in enumerate(values):
                    yield from _items(("sweep", block, name, index), value, "inputs", inputs.get(name))
    for name, distribution in _mapping(_mapping(sweep.get("random")).get("parameters")).items():
        choices = _mapping(distribution).get("choice")
        if isinstance(choices, list):
            for index, value in enumerate(choices):
                yield from _items(("sweep", "random", "parameters", name, "choice", index), value, "inputs",
                                  inputs.get(name))


def _items(path: KeyPath, value: Any, section: str, cli_type: Any) -> Iterator[ConnectorPlace]:
    items = enumerate(value) if isinstance(value, list) else [(None, value)]
    for index, item in items:
        if isinstance(item, dict) and isinstance(item.get("connector"), dict):
            yield ConnectorPlace(path if index is None else path + (index,), item, section, cli_type)
