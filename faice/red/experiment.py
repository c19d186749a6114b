"""The prepared experiment every engine receives.

    load → validate → expand sweep (batch ids) → fill variables → engine

Batch ids are computed before variables are filled, so they never depend on secret values
and the same RED file always gives the same ids.
"""

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
    def red_version(self) -> str:
        return str(self.data.get("redVersion"))

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


def load_experiment(
    source: str,
    *,
    variables=None,
    fill: bool = True,
) -> Experiment:
    """Load, validate (all problems at once), expand and — unless ``fill`` is false — fill
    ``{{variables}}`` from ``variables`` (a :class:`faice.red.variables.VariableSources`)."""
    from faice.red.load import load_mapping, to_plain
    from faice.red.sweep import expand_batches
    from faice.red.validate import validate_red

    document = load_mapping(source, "RED file")
    validate_red(document)
    data = to_plain(document.data)
    experiment = Experiment(document.name, data, expand_batches(data, document.name))
    if fill:
        from faice.red.variables import fill_experiment

        fill_experiment(experiment, variables)
    return experiment
