"""From a RED file to the experiment every engine receives.

    load → validate → expand sweep (batch ids) → fill variables → engine

Batch ids are computed before variables are filled, so they never depend on secret values
and the same RED file always gives the same ids.
"""

from __future__ import annotations

from collections.abc import Mapping

from faice.red.experiment import Experiment
from faice.red.variables import VariableSources


def load_experiment(
    source: str,
    *,
    variables: VariableSources | None = None,
    fill: bool = True,
    indexes: Mapping[str, int] | None = None,
) -> Experiment:
    """Load, validate (all problems at once), expand and — unless ``fill`` is false — fill
    ``{{variables}}`` from ``variables`` (a :class:`faice.red.variables.VariableSources`).
    ``indexes``: the sweep indexes of a run being resumed (see :func:`~faice.red.sweep.number_batches`)."""
    from faice.red.load import load_mapping, to_plain
    from faice.red.sweep import expand_batches
    from faice.red.validate import validate_red

    document = load_mapping(source, "RED file")
    validate_red(document)
    data = to_plain(document.data)
    experiment = Experiment(document.name, data, expand_batches(data, document.name, indexes=indexes))
    if fill:
        from faice.red.variables import fill_experiment

        fill_experiment(experiment, variables)
    return experiment
