"""Execution engines decide *where* the batch pipeline runs.

Each engine module exposes ``run(experiment, args) -> int`` (the process exit code):

* ``ccfaice`` / ``local`` → :mod:`faice.engines.local` (this host's Docker engine)
* ``ccagency`` → :mod:`faice.engines.agency` (a remote CC-Agency over REST)
* ``slurm`` → :mod:`faice.engines.slurm` (one job-array task per batch)
"""

from __future__ import annotations

import importlib

from faice.errors import UsageError

ENGINE_MODULES = {
    "ccfaice": "faice.engines.local",
    "ccagency": "faice.engines.agency",
    "slurm": "faice.engines.slurm",
}

# Flags that only make sense for some engines (upstream's cross-check, minus harmless ones).
ENGINE_ONLY_FLAGS = {
    "disable_retry": {"ccagency"},
    "leave_container": {"ccfaice", "slurm"},
    "disable_pull": {"ccfaice", "slurm"},
    "preserve_environment": {"ccfaice", "slurm"},
    "gpu_ids": {"ccfaice"},
    "dry_run": {"ccfaice", "slurm", "ccagency"},
}


def execute(args) -> int:
    """``faice exec``: prepare the experiment, check flags against its engine, dispatch."""
    from faice.red.experiment import load_experiment
    from faice.red.variables import VariableSources

    sources = VariableSources.from_args(args)
    # A dry run never needs secret values.
    experiment = load_experiment(args.red_file, variables=sources, fill=not args.dry_run)
    engine = experiment.engine
    if engine not in ENGINE_MODULES:
        raise UsageError(
            f"{experiment.source}: execution.engine: unknown engine {engine!r}; "
            f"expected one of {', '.join(sorted(ENGINE_MODULES))} (or local)"
        )
    for flag, engines in ENGINE_ONLY_FLAGS.items():
        if getattr(args, flag, None) and engine not in engines:
            option = "--" + flag.replace("_", "-")
            raise UsageError(f"{option} does not apply to the {engine} engine of {experiment.source}")
    module = importlib.import_module(ENGINE_MODULES[engine])
    return module.run(experiment, args)
