"""A seeded slice of bench/fuzz_red.py in CI (issue 19): mutated example RED files, large
lists among them, end in ``faice validate`` and ``faice exec --dry-run`` with exit 0 or a
clear error — no traceback, no internal error, no call over 10 s of CPU. The full run
(1,000 mutations) is ``bench/fuzz_red.py 1000``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "fuzz_red.py"


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("faice_bench_fuzz_red", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_seeded_slice_of_mutations_ends_cleanly(tmp_path):
    fuzz = _fuzz_module()
    report = fuzz.fuzz(30, seed=7, workdir=tmp_path)
    assert report.calls == 60
    assert report.tracebacks == [] and report.internal_errors == []
    assert report.odd_exit_codes == [] and report.over_cpu == []


def test_the_mutations_include_large_lists():
    import random

    fuzz = _fuzz_module()
    rng = random.Random(3)
    text = (Path(__file__).resolve().parents[2] / "examples" / "local" / "word-count.red.yml").read_bytes()
    sizes = [len(fuzz.mutate(rng, text)) for _ in range(200)]
    assert max(sizes) > 500_000, "some mutations hold a 100,000-item list"
