"""The prepared experiment every engine receives (built by :mod:`faice.red.prepare`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ENGINE_ALIASES = {"local": "ccfaice"}


@dataclass
class Batch:
    """One independent unit of work: the inputs/outputs of one container run."""

    index: int
    id: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    parameters: dict[str, Any] = field(default_factory=dict)  # sweep values, empty without sweep
    doc: str | None = None
    cloud: dict[str, Any] | None = None


@dataclass
class Experiment:
    source: str  # file name used in messages
    data: dict[str, Any]  # the whole RED document (plain data, sweep not yet expanded)
    batches: list[Batch]

    @property
    def cli(self) -> dict[str, Any]:
        return self.data["cli"]

    @property
    def container(self) -> dict[str, Any]:
        return self.data.get("container") or {}

    @property
    def container_settings(self) -> dict[str, Any]:
        return self.container.get("settings") or {}

    @property
    def execution(self) -> dict[str, Any]:
        return self.data.get("execution") or {"engine": "ccfaice", "settings": {}}

    @property
    def engine(self) -> str:
        name = str(self.execution.get("engine", "ccfaice"))
        return ENGINE_ALIASES.get(name, name)

    @classmethod
    def of_batch(cls, source: str, data: dict[str, Any], batch: Batch) -> Experiment:
        """An experiment of one batch, as a Slurm task or the agency server receives it:
        ``data`` holds cli, container and execution; the batch its inputs and outputs."""
        shared = {k: v for k, v in data.items() if k not in ("batches", "inputs", "outputs", "sweep")}
        return cls(source, shared, [batch])

