"""Execution engines decide *where* batch plans run; the batch pipeline is the same everywhere.

* ``ccfaice`` / ``local`` → :mod:`faice.engines.local` (this host's container runtime)
* ``ccagency`` → :mod:`faice.engines.agency.engine` (a remote CC-Agency over REST)
* ``slurm`` → :mod:`faice.engines.slurm.engine` (Slurm job arrays; each task runs one batch)

Each of these modules declares ``ENGINE``, an :class:`faice.engines.base.Engine`: its name, the
``faice exec`` flags it honours and the function that runs an experiment. A new engine is a
module with an ``ENGINE`` and a line in :data:`ENGINE_MODULES`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from faice.engines.base import Engine

# Imported only when used, so `faice exec` loads the one engine it runs.
ENGINE_MODULES = {
    "ccfaice": "faice.engines.local",
    "ccagency": "faice.engines.agency.engine",
    "slurm": "faice.engines.slurm.engine",
}


def engine(name: str) -> Engine:
    """The engine of ``execution.engine: name`` (one of :data:`ENGINE_MODULES`)."""
    return importlib.import_module(ENGINE_MODULES[name]).ENGINE
