"""Fixtures for the hostile-input tests: the agency tests' real-server fixtures
(tests/support/agency_fixtures.py)."""

from agency_fixtures import (  # noqa: F401  (fixtures, found by pytest in this module)
    _paused_server,
    make_agency,
    paused_agency,
    postgres_db,
    postgres_url,
)
from runtime_fixtures import charliecloud, podman, registry  # noqa: F401  (the runtimes' fixtures)
