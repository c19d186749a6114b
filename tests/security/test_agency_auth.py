"""Authentication and isolation on the agency under attack (issue 12, item 4): parallel
password guessing, tokens after a password change, and every endpoint on another user's ids."""

from __future__ import annotations

import base64
import http.client
import statistics
import threading
import time

import agency_reds as reds
import pytest
import requests
from werkzeug.routing import Map

from faice.agency.app import CHALLENGE, AgencyApp
from faice.agency.auth import LOGIN_FAILED, add_user
from faice.agency.db import Database

GUESSES = 40
ATTEMPTS = 5


def _get_from(server, source: str, user: str, password: str) -> tuple[int, str]:
    """GET /version with Basic auth from a chosen loopback source address."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60, source_address=(source, 0))
    try:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        conn.request("GET", "/version", headers={"Authorization": f"Basic {token}"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def locking_agency(request, make_agency):
    extra = ("--paused", "--login-attempts", str(ATTEMPTS), "--block-seconds", "30")
    if request.param == "postgresql":
        return make_agency(*extra, "--workdir", str(request.getfixturevalue("tmp_path") / "pgwork"),
                           db_url=request.getfixturevalue("postgres_db"))
    return make_agency(*extra)


def test_parallel_wrong_passwords_get_at_most_the_allowed_checks(locking_agency):
    server = locking_agency
    alice = server.name("alice")
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()
    start = threading.Barrier(GUESSES)

    def guess(i: int) -> None:
        start.wait()
        answer = _get_from(server, "127.0.0.1", alice, f"wrong-{i}")
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(GUESSES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(answers) == {(401, LOGIN_FAILED)}  # one answer, checked or blocked
    # the right password no longer helps from the attacker's address …
    assert _get_from(server, "127.0.0.1", alice, server.users["alice"]) == (401, LOGIN_FAILED)
    # … but the attacker cannot lock alice out elsewhere, nor anyone else
    assert _get_from(server, "127.0.0.2", alice, server.users["alice"])[0] == 200
    assert _get_from(server, "127.0.0.1", server.name("bob"), server.users["bob"])[0] == 200


def _timed_answer(server, user: str, password: str) -> tuple[tuple[int, str, str | None], float]:
    started = time.perf_counter()
    response = requests.get(server.url + "/version", auth=(user, password), timeout=60)
    return (response.status_code, response.text, response.headers.get("WWW-Authenticate")), time.perf_counter() - started


def test_after_the_lockout_a_real_name_answers_like_an_unknown_one(locking_agency):
    """User enumeration: a blocked real name answered "User … is currently blocked" at once,
    an unknown one "Invalid username or password" after a scrypt."""
    server = locking_agency
    unknown = f"nobody-{server.name('alice')}"
    answers: dict[str, list] = {server.name("alice"): [], unknown: []}
    for name, seen in answers.items():
        for i in range(ATTEMPTS + 6):
            seen.append(_timed_answer(server, name, f"wrong-{i}"))
    real, fake = (answers[n] for n in (server.name("alice"), unknown))
    assert [a for a, _ in real] == [a for a, _ in fake]  # status, body and challenge, blocked or not
    assert {a for a, _ in real} == {(401, LOGIN_FAILED, CHALLENGE)}
    blocked_real = statistics.median(t for _, t in real[ATTEMPTS + 1:])
    blocked_fake = statistics.median(t for _, t in fake[ATTEMPTS + 1:])
    assert max(blocked_real, blocked_fake) < 3 * min(blocked_real, blocked_fake), (blocked_real, blocked_fake)
    assert server.get("/version", "alice").status_code == 401  # alice is blocked here …
    assert server.get("/version", "bob").status_code == 200  # … nobody else


def test_tokens_and_cached_logins_die_with_a_password_change(paused_agency):
    server = paused_agency
    tokens = requests.post(server.url + "/login", auth=server.auth("alice"), timeout=10).json()
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    refresh = {"Authorization": f"Bearer {tokens['refresh_token']}"}
    assert requests.get(server.url + "/batches", headers=bearer, timeout=10).status_code == 200
    assert server.get("/batches").status_code == 200  # the Basic login is now cached too
    db = Database(server.db_url)
    try:
        add_user(db, server.name("alice"), "a-new-password", admin=False)
    finally:
        db.close()
    revoked = requests.get(server.url + "/batches", headers=bearer, timeout=10)
    assert revoked.status_code == 401 and "revoked" in revoked.text
    assert requests.post(server.url + "/refreshtoken", headers=refresh, timeout=10).status_code == 401
    assert server.get("/batches").status_code == 401  # the old password, cached a moment ago
    assert requests.get(server.url + "/batches", auth=(server.name("alice"), "a-new-password"), timeout=10).status_code == 200


def test_a_token_of_one_kind_or_with_a_changed_user_is_refused(paused_agency):
    server = paused_agency
    tokens = requests.post(server.url + "/login", auth=server.auth("bob"), timeout=10).json()
    payload, _, rest = tokens["access_token"].partition(".")
    decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
    forged_payload = base64.urlsafe_b64encode(decoded.replace(server.name("bob"), server.name("root")).encode()).decode().rstrip("=")
    forged = {"Authorization": f"Bearer {forged_payload}.{rest}"}
    assert requests.get(server.url + "/batches", headers=forged, timeout=10).status_code == 401


# ---------------------------------------------------------------- isolation


def _requests_on(alice_experiment: str, alice_batch: str) -> dict[str, list[tuple[str, str, dict]]]:
    """Per endpoint: requests user B makes on user A's ids (every rule must be listed)."""
    return {
        "hello": [], "version": [], "schema_red": [], "schema_container": [], "login": [], "refresh": [],
        "red": [],  # creates B's own experiment only; covered by the listings below
        "experiments": [("GET", "/experiments", {"username": "ALICE"})],
        "experiments_count": [("GET", "/experiments/count", {"username": "ALICE"})],
        "experiment": [("GET", f"/experiments/{alice_experiment}", {})],
        "trials": [("GET", f"/experiments/{alice_experiment}/trials", {})],
        "batches": [("GET", "/batches", {"experimentId": alice_experiment}), ("GET", "/batches", {"username": "ALICE"})],
        "batches_count": [("GET", "/batches/count", {"experimentId": alice_experiment})],
        "batch": [("GET", f"/batches/{alice_batch}", {}), ("DELETE", f"/batches/{alice_batch}", {})],
        "batch_file": [("GET", f"/batches/{alice_batch}/stdout", {}), ("GET", f"/batches/{alice_batch}/stderr", {})],
        "nodes": [("GET", "/nodes", {})],
    }


def test_every_endpoint_hides_another_users_work(paused_agency):
    server = paused_agency
    experiment = server.submit(reds.minimal(), user="alice")
    batch = server.batch_ids(experiment)[0]
    server.get(f"/batches/{batch}", "alice")
    plan = _requests_on(experiment, batch)
    rules: Map = AgencyApp.url_map
    assert {rule.endpoint for rule in rules.iter_rules()} == set(plan), "a new endpoint needs an isolation check"
    bob = server.auth("bob")
    for endpoint, calls in plan.items():
        for method, path, params in calls:
            params = {k: (server.name("alice") if v == "ALICE" else v) for k, v in params.items()}
            response = requests.request(method, server.url + path, params=params, auth=bob, timeout=10)
            assert response.status_code in (200, 404), (endpoint, path, response.status_code, response.text)
            if "<" in str([r.rule for r in rules.iter_rules() if r.endpoint == endpoint]):
                assert response.status_code == 404, (endpoint, method, path, response.text)
            else:  # listings and counts: empty, never alice's
                body = response.json()
                assert body in ([], {"count": 0}) or (endpoint == "nodes" and all(n["currentBatches"] == [] for n in body)), (endpoint, body)
            assert experiment not in response.text and batch not in response.text
    # bob's DELETE changed nothing
    assert server.get(f"/batches/{batch}", "alice").json()["state"] == "registered"
