"""Every value a request carries is bounded before it reaches SQL (issue 19): numbers beyond
64 bits, NUL bytes (PostgreSQL refuses them in text), non-UTF-8 bytes, huge strings — in
every endpoint's query parameters, path ids and Basic login. Each answer is a 4xx, never a
500 with a traceback; on SQLite and on PostgreSQL, against the real server. (A RED body's
values are stored as JSON documents, not SQL columns; its numbers are bounded by the
validator: 100 digits.)"""

from __future__ import annotations

import base64
import json

import agency_reds as reds
import pytest
import requests
from werkzeug.routing import Map

from faice.agency.app import AgencyApp

# Query and path values that broke or could break a query (as raw, already %-encoded text).
HOSTILE = [
    "18446744073709551616",  # 2^64
    "9223372036854775808",  # 2^63: one over SQLite's and PostgreSQL's BIGINT
    "-9223372036854775809",
    "9" * 5000,  # over Python's int() digit limit
    "%00", "a%00b", "%FF%FE", "%C3%28",  # NUL, invalid UTF-8
    "x" * 20000,
    "1e400", "NaN", "%E2%80%AE",
]


@pytest.fixture(params=["sqlite", "postgresql"])
def any_agency(request, make_agency):
    if request.param == "postgresql":
        return make_agency("--paused", "--workdir", str(request.getfixturevalue("tmp_path") / "pgwork"),
                           db_url=request.getfixturevalue("postgres_db"))
    return make_agency("--paused")


def _calls(experiment: str, batch: str) -> dict[str, list[tuple[str, str, dict[str, str]]]]:
    """Per endpoint: (method, path, query) with the value marked V (every rule is listed)."""
    lists = {p: "V" for p in ("username", "skip", "limit", "ascending")}
    batch_filters = {p: "V" for p in ("username", "node", "state", "experimentId")}
    return {
        "hello": [], "version": [], "schema_red": [], "schema_container": [], "login": [], "refresh": [],
        "red": [("POST", "/red", {"disableRetry": "V", "disableConnectorValidation": "V"})],
        "experiments": [("GET", "/experiments", {p: "V"}) for p in lists],
        "experiments_count": [("GET", "/experiments/count", {"username": "V"})],
        "experiment": [("GET", "/experiments/V", {})],
        "trials": [("GET", "/experiments/V/trials", {})],
        "batches": [("GET", "/batches", {p: "V"}) for p in (*lists, *batch_filters)],
        "batches_count": [("GET", "/batches/count", {p: "V"}) for p in batch_filters],
        "batch": [("GET", "/batches/V", {}), ("DELETE", "/batches/V", {})],
        "batch_file": [("GET", f"/batches/{batch}/V", {}), ("GET", "/batches/V/stdout", {})],
        "nodes": [("GET", "/nodes", {"V": "V"})],
    }


def _send(server, method: str, path: str, query: dict[str, str], value: str, **kwargs) -> requests.Response:
    url = server.url + path.replace("/V", "/" + value)
    if query:
        url += "?" + "&".join(f"{k.replace('V', value)}={v.replace('V', value)}" for k, v in query.items())
    return requests.request(method, url, auth=server.auth("alice"), timeout=30, **kwargs)


def test_no_query_or_path_value_reaches_sql_unbounded(any_agency):
    server = any_agency
    experiment = server.submit(reds.minimal())
    batch = server.batch_ids(experiment)[0]
    plan = _calls(experiment, batch)
    assert {rule.endpoint for rule in Map.iter_rules(AgencyApp.url_map)} == set(plan), "a new endpoint needs a check"
    answers = []
    for calls in plan.values():
        for method, path, query in calls:
            for value in HOSTILE:
                kwargs = {"data": json.dumps(reds.minimal())} if method == "POST" else {}
                response = _send(server, method, path, query, value, **kwargs)
                answers.append((method, path, query, value[:30], response.status_code, response.text[:200]))
    errors = [a for a in answers if a[4] >= 500]
    assert not errors, errors
    too_big = _send(server, "GET", "/batches", {"skip": "V"}, "18446744073709551616")
    assert too_big.status_code == 400 and "skip" in too_big.text
    assert "Traceback" not in server.log.read_text()


@pytest.mark.parametrize("name", ["a\x00b", "x" * 20000, "\udcff"])
def test_hostile_login_names_are_401_never_500(any_agency, name):
    server = any_agency
    token = base64.b64encode(f"{name}:pw".encode("utf-8", "surrogateescape")).decode()
    for path, method in (("/batches", "GET"), ("/login", "POST")):
        response = requests.request(method, server.url + path, headers={"Authorization": f"Basic {token}"}, timeout=30)
        assert response.status_code == 401, response.text
    assert "Traceback" not in server.log.read_text()
