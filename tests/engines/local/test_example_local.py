"""examples/local runs as its header says (with the local test image instead of Debian's)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "local"

pytestmark = pytest.mark.docker


def test_word_count_example_runs_and_sends_summaries(tmp_path, test_image):
    work = tmp_path / "local"
    shutil.copytree(EXAMPLE, work)
    red = work / "word-count.red.yml"
    red.write_text(red.read_text().replace("faice-test/base:bookworm", test_image))
    done = subprocess.run([sys.executable, "-m", "faice", "exec", red.name, "--outdir", "runs/words", "--no-progress"],
                          cwd=work, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summaries = {p.name: p.read_text() for p in (work / "results").iterdir()}
    assert summaries == {
        "summary-1.txt": "min length 1: 27 distinct words\n",
        "summary-3.txt": "min length 3: 21 distinct words\n",
        "summary-5.txt": "min length 5: 10 distinct words\n",
    }
    reports = sorted((work / "runs" / "words" / "batches").glob("*/outputs/report.txt"))
    assert len(reports) == 3 and all(r.read_text().startswith("min length") for r in reports)
