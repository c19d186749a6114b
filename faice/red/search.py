"""``sweep.search``: batches proposed while the run goes, from the results of the batches before.

    sweep:
      search:
        algorithm: tpe          # tpe | gp | cmaes | random | qmc
        trials: 32              # batches in all (raise it and --resume grows the search)
        seed: 1
        startupTrials: 8        # tpe/gp: random proposals before the model takes over
        parameters:             # the distributions of sweep.random
          learning_rate: {loguniform: [0.0001, 1.0]}
          batch_size: {choice: [16, 64, 256]}
      maxConcurrent: 4          # trials in flight at a time

Unlike ``grid``/``zip``/``random``, a search cannot be expanded up front: each trial is a
batch whose parameters a sampler proposes once it knows the objective of the trials before
(the ``metrics`` section says which one), so it needs ``metrics`` and does not combine with
the other sections. This module only checks the section and describes its space; the loop
that asks the sampler lives in :mod:`faice.pipeline.search`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from faice.errors import KeyPath, kind_of
from faice.red.values import is_int

ALGORITHMS = ("tpe", "gp", "cmaes", "random", "qmc")
SEARCH_KEYS = ("algorithm", "trials", "seed", "startupTrials", "parameters")
MAX_TRIALS = 100_000
MAX_SEED = 2**32 - 1  # numpy's RandomState, under every Optuna sampler
CHOICE_TYPES = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class SearchSpec:
    """A validated ``sweep.search`` section."""

    algorithm: str
    trials: int
    seed: int
    startup_trials: int | None
    parameters: dict[str, tuple[str, list[Any]]]  # name → (uniform|loguniform|randint|choice, arguments)
    max_concurrent: int | None = None

    @classmethod
    def from_sweep(cls, sweep: dict) -> SearchSpec:
        spec = sweep["search"]
        parameters = {name: next(iter(distribution.items())) for name, distribution in spec["parameters"].items()}
        return cls(
            algorithm=spec.get("algorithm", "tpe"),
            trials=int(spec["trials"]),
            seed=int(spec.get("seed", 0)),
            startup_trials=int(spec["startupTrials"]) if "startupTrials" in spec else None,
            parameters={name: (kind, list(arguments)) for name, (kind, arguments) in parameters.items()},
            max_concurrent=sweep.get("maxConcurrent"),
        )

    def example(self) -> dict[str, Any]:
        """One point of the space (the low ends, the first choices): what preflight checks the image with."""
        point: dict[str, Any] = {}
        for name, (kind, arguments) in self.parameters.items():
            point[name] = arguments[0] if kind in ("choice", "randint") else float(arguments[0])
        return point


def is_search(data: Any) -> bool:
    """True when a RED document's sweep is a search (trials proposed while the run goes)."""
    sweep = data.get("sweep") if isinstance(data, dict) else None
    return isinstance(sweep, dict) and "search" in sweep


def search_problems(data: dict, names: dict[str, KeyPath], check_name: Any, distribution_problem: Any) -> list:
    """(key path, message) for everything wrong with ``sweep.search``; ``names`` collects the
    parameter names (for the reference checks of the sweep)."""
    found: list[tuple[KeyPath, str]] = []
    sweep = data["sweep"]
    spec = sweep["search"]
    path: KeyPath = ("sweep", "search")
    others = [key for key in ("grid", "zip", "random", "maxBatches") if key in sweep]
    for key in others:
        hint = ("put its values under search.parameters as {choice: [...]}" if key in ("grid", "zip")
                else "its distributions go under search.parameters" if key == "random"
                else "search.trials is the budget of a search")
        found.append((("sweep", key), f"{key} does not combine with search: a search proposes every batch itself; {hint}"))
    if "metrics" not in data:
        found.append((path, "a search learns from the objective: add a metrics section with an objective "
                            "(e.g. metrics: {objective: {name: val_accuracy, goal: max}, sources: [...]})"))
    if not isinstance(spec, dict):
        found.append((path, f"expected a mapping with algorithm, trials, seed and parameters, got {kind_of(spec)}"))
        return found
    for key in spec:
        if key not in SEARCH_KEYS:
            found.append(((*path, key), f"unknown key; expected one of {', '.join(SEARCH_KEYS)}"))
    algorithm = spec.get("algorithm", "tpe")
    if algorithm not in ALGORITHMS:
        found.append(((*path, "algorithm"), f"expected one of {', '.join(ALGORITHMS)}, got {algorithm!r}"))
    trials = spec.get("trials")
    if trials is None:
        found.append(((*path, "trials"), "missing: how many batches the search runs in all"))
    elif not is_int(trials) or not 1 <= trials <= MAX_TRIALS:
        found.append(((*path, "trials"), f"expected an integer from 1 to {MAX_TRIALS:,}, got {trials!r}"))
    if "seed" in spec and (not is_int(spec["seed"]) or not 0 <= spec["seed"] <= MAX_SEED):
        found.append(((*path, "seed"), f"expected an integer seed from 0 to {MAX_SEED:,} (the samplers' range), "
                                       f"got {spec['seed']!r}"))
    if "startupTrials" in spec:
        startup = spec["startupTrials"]
        if algorithm not in ("tpe", "gp"):
            found.append(((*path, "startupTrials"), f"startupTrials applies to tpe and gp, not {algorithm}"))
        elif not is_int(startup) or startup < 0:
            found.append(((*path, "startupTrials"), f"expected an integer >= 0, got {startup!r}"))
    parameters = spec.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        found.append(((*path, "parameters"), "expected a non-empty mapping of parameter name to distribution "
                                             "({uniform|loguniform|randint: [low, high]} or {choice: [values]})"))
        return found
    for name, distribution in parameters.items():
        where: KeyPath = (*path, "parameters", name)
        check_name(name, where, names, found)
        message = distribution_problem(distribution)
        if message:
            found.append((where, message))
            continue
        (kind, arguments), = distribution.items()
        if kind == "choice":
            for index, value in enumerate(arguments):
                if not isinstance(value, CHOICE_TYPES) or (isinstance(value, float) and not math.isfinite(value)):
                    found.append(((*where, kind, index), f"a search's choices must be numbers, strings, booleans or "
                                                         f"null (the sampler compares them), got {kind_of(value)}"))
    return found


