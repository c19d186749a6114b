"""The agency's fixtures (a real ``faice agency serve``, PostgreSQL): tests/support/agency_fixtures.py."""

from agency_fixtures import (  # noqa: F401  (fixtures, found by pytest in this module)
    _paused_server,
    _running_server,
    agency,
    make_agency,
    own_postgres,
    paused_agency,
    postgres_db,
    postgres_url,
)
