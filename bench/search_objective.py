"""The objective of the sweep.search tests and of bench/search.py (a): a program that prints
``step=S acc=A`` a few times, A growing to a score that is best at lr = 0.03 and batch size 64.
It is unknown to faice, which reads the values from the program's stdout (nothing of faice or
Optuna in the image).

bench/ may import faice but never tests/; the tests import this module as
``bench.search_objective`` (``python -m pytest`` runs from the repository root)."""

from __future__ import annotations

import math
from typing import Any

SPACE = {"lr": {"loguniform": [1e-5, 10.0]}, "bs": {"choice": [8, 16, 32, 64, 128, 256, 512]}}


def objective(lr: float, bs: int) -> float:
    """The program's final value, computed in process (as Optuna's own loop evaluates it)."""
    return round(1 - (math.log10(lr) - math.log10(0.03)) ** 2 / 4 - abs(math.log2(bs / 64)) / 8, 6)


def train_script(steps: int = 3, pause: float = 0.0) -> str:
    """The program (``python3 -c``, arguments lr and bs): ``steps`` lines, ``pause`` seconds apart."""
    return ("import sys, math, time\n"
            "lr, bs = float(sys.argv[1]), int(sys.argv[2])\n"
            "score = 1 - (math.log10(lr) - math.log10(0.03)) ** 2 / 4 - abs(math.log2(bs / 64)) / 8\n"
            f"for step in range({steps}):\n"
            f"    print('step=%d acc=%.6f' % (step, score * (step + 1) / {steps}), flush=True)\n"
            f"    time.sleep({pause})\n")


def search_red(image: str, trials: int, *, seed: int = 7, pause: float = 0.0, max_concurrent: int = 4,
               ram: int | None = None, execution: dict[str, Any] | None = None, **search: Any) -> dict[str, Any]:
    """A TPE search of ``trials`` trials over :data:`SPACE` as a RED document; ``search`` adds keys
    to ``sweep.search`` or replaces them (``startupTrials``, ``parameters``). It runs on the local
    engine unless ``execution`` says otherwise."""
    settings: dict[str, Any] = {"image": {"url": image}}
    if ram:
        settings["ram"] = ram
    return {
        "redVersion": "9",
        "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["python3", "-c", train_script(pause=pause)],
                "inputs": {"lr": {"type": "float", "inputBinding": {"position": 1}},
                           "bs": {"type": "int", "inputBinding": {"position": 2}}},
                "outputs": {}},
        "inputs": {"lr": 0.1, "bs": 32},
        "outputs": {},
        "sweep": {"search": {"algorithm": "tpe", "trials": trials, "seed": seed, "parameters": SPACE, **search},
                  "maxConcurrent": max_concurrent},
        "metrics": {"objective": {"name": "acc", "goal": "max"}, "step": "step", "sources": [{"stdout": True}]},
        "container": {"engine": "docker", "settings": settings},
        "execution": execution or {"engine": "ccfaice", "settings": {}},
    }
