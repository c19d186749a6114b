"""Fixtures for the hostile-input tests: the agency tests' real-server fixtures, loaded under
a module name of their own (``from conftest import …`` would pick whichever was first)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

AGENCY_TESTS = Path(__file__).resolve().parents[1] / "agency"


def _agency_fixtures():
    spec = importlib.util.spec_from_file_location("faice_security_agency_fixtures", AGENCY_TESTS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_fixtures = _agency_fixtures()
make_agency = _fixtures.make_agency
_paused_server = _fixtures._paused_server
paused_agency = _fixtures.paused_agency
postgres_url = _fixtures.postgres_url
postgres_db = _fixtures.postgres_db
