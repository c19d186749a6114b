"""Compatibility both ways: upstream cc-faice 9.3.0 submits to ``faice agency serve`` and
its batch succeeds; upstream's tests/red files (§8.3) behave as upstream's tests expect."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import time
from pathlib import Path

import agency_reds as reds
import pytest
from agency_helpers import HookServer

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


def _upstream_find_batch_ids(server, experiment_id: str) -> list[str]:
    """What upstream's tests/test_setup.py ``find_batch_ids`` does: list every batch in the
    default order and keep this experiment's; its ``find_batch_id`` takes the first."""
    response = server.get("/batches")
    assert response.status_code == 200, response.text
    return [b["_id"] for b in response.json() if b["experimentId"] == experiment_id]


def test_upstream_notification_hook_batches(make_agency, test_image):
    """Upstream's test_notification_hook.py::test_notification_hooks_batches: one message
    whose batches are exactly those listed, in the listed order."""
    hook = HookServer()
    try:
        server = make_agency("--notification-hook", hook.url)
        experiment_id = server.submit(reds.multi_batch(["a", "b", "c"]))
        batch_ids = _upstream_find_batch_ids(server, experiment_id)
        assert [server.get(f"/batches/{i}").json()["batchesListIndex"] for i in batch_ids] == [0, 1, 2]
        expected = [{"batches": [{"batchId": i, "state": server.wait_state(i)["state"]} for i in batch_ids]}]
        assert hook.wait_accepted(1), server.log.read_text()[-2000:]
        time.sleep(2.5)  # a duplicate would arrive within the next dispatcher rounds
        assert [r["body"] for r in hook.received] == expected
    finally:
        hook.close()
