"""Compatibility both ways: upstream cc-faice 9.3.0 submits to ``faice agency serve`` and
its batch succeeds; upstream's tests/red files (§8.3) behave as upstream's tests expect."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import agency_reds as reds
import pytest

pytestmark = [pytest.mark.docker, pytest.mark.upstream]


def _upstream_faice() -> Path:
    """Upstream's faice from the shared venv (tests/red/upstream.py builds it once, locked)."""
    path = Path(__file__).parents[1] / "red" / "upstream.py"
    spec = importlib.util.spec_from_file_location("faice_tests_upstream", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.upstream_faice()


def test_upstream_faice_submits_and_batch_succeeds(agency, tmp_path):
    upstream = _upstream_faice()
    red = reds.minimal(agency.url, agency.name("alice"), agency.users["alice"], stdout="stdout.txt")
    red_file = tmp_path / "minimal.json"
    red_file.write_text(json.dumps(red))
    result = subprocess.run([str(upstream), "exec", str(red_file)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"'experimentId': '([0-9a-f]{24})'", result.stdout)
    assert match, result.stdout
    batch_id = agency.batch_ids(match.group(1))[0]
    assert agency.wait_state(batch_id)["state"] == "succeeded"
    assert agency.get(f"/batches/{batch_id}/stdout").text == "test\n"


def test_upstream_faice_sees_400_for_format_error(paused_agency, tmp_path):
    upstream = _upstream_faice()
    red = reds.without(reds.minimal(paused_agency.url, paused_agency.name("alice"), paused_agency.users["alice"]), "outputs")
    red_file = tmp_path / "format_error.json"
    red_file.write_text(json.dumps(red))
    result = subprocess.run([str(upstream), "exec", str(red_file)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "400" in result.stdout + result.stderr
