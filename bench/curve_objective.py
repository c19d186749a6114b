"""The curve objective of the early-stopping tests and of bench/search.py (b): a 12-batch grid
over ``n`` whose batch n prints ``step=S acc=A`` with A = quality(n) · (1 − 0.8^(S+1)), so the
batch with the best quality is the best at every step. n = 3 wins; n >= 5 get worse with n
(a learning rate that grows too large).

bench/ may import faice but never tests/; the tests import this module as
``bench.curve_objective`` (``python -m pytest`` runs from the repository root)."""

from __future__ import annotations

from typing import Any

GRID = {"grid": {"n": list(range(1, 13))}}


def curve_script(steps: int = 16, pause: float = 0.4) -> str:
    """The ``sh -c`` script of one batch (``$0`` is n): ``steps`` lines, ``pause`` seconds apart."""
    return ("python3 -u -c 'import sys, time\n"
            "n = int(sys.argv[1])\n"
            "quality = {1: 0.8, 2: 0.85, 3: 0.95, 4: 0.9}.get(n, 0.8 - 0.05 * n)\n"
            f"for step in range({steps}):\n"
            "    print(\"step=%d acc=%.6f\" % (step, quality * (1 - 0.8 ** (step + 1))))\n"
            f"    time.sleep({pause})\n' \"$0\"")


def curve_red(image: str, early: dict[str, Any] | None = None, *, steps: int = 16, pause: float = 0.4,
              ram: int | None = None, execution: dict[str, Any] | None = None) -> dict[str, Any]:
    """The grid as a RED document, with ``metrics.earlyStopping`` = ``early`` when given; it runs
    on the local engine unless ``execution`` says otherwise."""
    metrics: dict[str, Any] = {"objective": {"name": "acc", "goal": "max"}, "step": "step",
                               "sources": [{"stdout": True}]}
    if early:
        metrics["earlyStopping"] = early
    settings: dict[str, Any] = {"image": {"url": image}}
    if ram:
        settings["ram"] = ram
    return {
        "redVersion": "9",
        "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["sh", "-c"],
                "inputs": {"script": {"type": "string", "inputBinding": {"position": 0}},
                           "n": {"type": "int", "inputBinding": {"position": 1}}}, "outputs": {}},
        "inputs": {"script": curve_script(steps, pause), "n": 0},
        "sweep": GRID,
        "metrics": metrics,
        "container": {"engine": "docker", "settings": settings},
        "execution": execution or {"engine": "ccfaice", "settings": {}},
    }
