"""The REST API without running batches (server started with --paused): upstream's
test_basic_broker.py and test_experiment.py re-done, plus validation, auth, lockout and
visibility rules."""

from __future__ import annotations

import json
import time

import agency_reds as reds
import pytest
import requests

from faice.agency.auth import LOGIN_FAILED

AUTH_ENDPOINTS = ["/version", "/experiments/count", "/experiments", "/batches/count", "/batches", "/nodes"]


def test_root_is_public(paused_agency):
    response = paused_agency.get("/", user=None)
    assert response.status_code == 200
    assert response.json() == {"Hello": "World"}


@pytest.mark.parametrize("path", AUTH_ENDPOINTS)
def test_endpoints_need_auth(paused_agency, path):
    assert paused_agency.get(path).status_code == 200
    refused = paused_agency.get(path, user=None)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Basic")


def test_version_is_upstream_compatible(paused_agency):
    assert paused_agency.get("/version").json()["agencyVersion"] == "9.3.0"


def test_post_red_needs_auth_and_returns_object_id(paused_agency):
    assert paused_agency.post_red(reds.minimal(), user=None).status_code == 401
    response = paused_agency.post_red(reds.minimal())
    assert response.status_code == 200
    experiment_id = response.json()["experimentId"]
    assert len(experiment_id) == 24 and int(experiment_id, 16) >= 0


@pytest.mark.parametrize("path", ["/experiments/651e", "/batches/651e", "/batches/651e/stdout"])
def test_invalid_object_id_is_400(paused_agency, path):
    response = paused_agency.get(path)
    assert response.status_code == 400
    assert "Not a valid BSON ObjectId" in response.json()


def test_unknown_id_is_404(paused_agency):
    assert paused_agency.get("/experiments/" + "0" * 24).status_code == 404
    assert paused_agency.get("/batches/" + "0" * 24).status_code == 404


def test_experiment_and_batch_documents(paused_agency):
    experiment_id = paused_agency.submit(reds.minimal())
    experiment = paused_agency.get(f"/experiments/{experiment_id}").json()
    assert experiment["_id"] == experiment_id
    assert experiment["username"] == paused_agency.name("alice")
    assert experiment["cli"]["baseCommand"] == "echo"
    assert "access" not in experiment["execution"]["settings"]  # credentials are not stored in documents
    assert experiment["execution"]["settings"]["retryIfFailed"] is True
    listed = [b for b in paused_agency.get("/batches").json() if b["experimentId"] == experiment_id]
    assert len(listed) == 1
    batch = paused_agency.get(f"/batches/{listed[0]['_id']}").json()
    assert batch["_id"] == listed[0]["_id"]
    assert batch["state"] == "registered"
    assert batch["inputs"] == {"some_string": "test"}
    assert set(listed[0]) >= {"_id", "username", "registrationTime", "state", "experimentId", "node", "batchesListIndex", "history"}


def test_disable_retry_flag_is_recorded(paused_agency):
    experiment_id = paused_agency.submit(reds.minimal(), disableRetry="yes", disableConnectorValidation="1")
    settings = paused_agency.get(f"/experiments/{experiment_id}").json()["execution"]["settings"]
    assert settings["retryIfFailed"] is False
    assert settings["disableConnectorValidation"] is True


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", "Did not send RED data as JSON."),
        (b"[1, 2]", "Did not send RED data as JSON."),
        (json.dumps(reds.without(reds.minimal(), "outputs")), "CC-Agency requires outputs to be defined in RED data."),
        (json.dumps(reds.without(reds.minimal(), "container", "settings", "ram")), "ram"),
        (json.dumps(reds.without(reds.minimal(), "cli")), "Given RED data is invalid."),
        (json.dumps(reds.minimal(password="{{agency_password}}")), "{{agency_password}}"),
    ],
    ids=["malformed-json", "not-a-mapping", "format_error-no-outputs", "no-ram", "invalid-red", "unresolved-variable"],
)
def test_bad_red_is_400_with_message(paused_agency, body, expected):
    response = paused_agency.post_red(body)
    assert response.status_code == 400
    assert expected in response.json()
    assert paused_agency.get("/experiments/count").json()["count"] == 0


def test_batches_without_outputs_rejected(paused_agency):
    red = reds.multi_batch(["a", "b"])
    del red["batches"][1]["outputs"]
    response = paused_agency.post_red(red)
    assert response.status_code == 400
    assert "all batches to have outputs" in response.json()


@pytest.mark.parametrize(
    "query", [{"skip": "-1"}, {"limit": "0"}, {"limit": "x"}, {"state": "bogus"}, {"experimentId": "651e"}]
)
def test_list_parameters_validated(paused_agency, query):
    assert paused_agency.get("/batches", params=query).status_code == 400


def test_list_paging_and_order(paused_agency):
    ids = [paused_agency.submit(reds.minimal(value=str(i))) for i in range(5)]
    newest_first = [e["_id"] for e in paused_agency.get("/experiments").json()]
    assert newest_first == ids[::-1]
    page = [e["_id"] for e in paused_agency.get("/experiments", params={"skip": 1, "limit": 2, "ascending": "true"}).json()]
    assert page == ids[1:3]
    assert [b["state"] for b in paused_agency.get("/batches", params={"limit": 2}).json()] == ["registered"] * 2
    assert paused_agency.get("/batches/count", params={"state": "registered"}).json() == {"count": 5}


def test_wrong_password_is_401(paused_agency):
    response = requests.get(paused_agency.url + "/batches", auth=(paused_agency.name("alice"), "wrong"), timeout=10)
    assert response.status_code == 401
    response = requests.get(paused_agency.url + "/batches", auth=("nobody", "wrong"), timeout=10)
    assert response.status_code == 401


def test_lockout_after_repeated_failures(make_agency):
    server = make_agency("--paused", "--login-attempts", "3", "--block-seconds", "3")
    for _ in range(4):
        assert requests.get(server.url + "/version", auth=(server.name("alice"), "wrong"), timeout=10).status_code == 401
    blocked = server.get("/version")  # the right password no longer helps
    assert (blocked.status_code, blocked.text) == (401, LOGIN_FAILED)  # as for any failed login
    assert server.get("/version", user="bob").status_code == 200  # other users are not affected
    time.sleep(3.2)
    assert server.get("/version").status_code == 200


def test_other_users_work_is_invisible(paused_agency):
    experiment_id = paused_agency.submit(reds.minimal(), user="alice")
    batch_id = paused_agency.batch_ids(experiment_id)[0]
    assert paused_agency.get(f"/batches/{batch_id}", user="bob").status_code == 404
    assert paused_agency.get(f"/experiments/{experiment_id}", user="bob").status_code == 404
    assert paused_agency.get(f"/batches/{batch_id}/stdout", user="bob").status_code == 404
    assert paused_agency.delete(f"/batches/{batch_id}", user="bob").status_code == 404
    assert paused_agency.get("/batches", user="bob").json() == []
    assert paused_agency.get("/batches", user="bob", params={"username": paused_agency.name("alice")}).json() == []
    assert paused_agency.get("/experiments/count", user="bob").json() == {"count": 0}
    assert paused_agency.get(f"/batches/{batch_id}").json()["state"] == "registered"
    # the admin sees everything
    assert paused_agency.get(f"/batches/{batch_id}", user="root").status_code == 200
    assert paused_agency.get("/batches/count", user="root", params={"username": paused_agency.name("alice")}).json() == {"count": 1}


def test_cancel_registered_batch_and_final_is_unchanged(paused_agency):
    batch_id = paused_agency.batch_ids(paused_agency.submit(reds.minimal()))[0]
    cancelled = paused_agency.delete(f"/batches/{batch_id}")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    again = paused_agency.delete(f"/batches/{batch_id}").json()
    assert again["state"] == "cancelled"
    assert [h["state"] for h in again["history"]] == ["registered", "cancelled"]


def test_login_token(paused_agency):
    tokens = requests.post(paused_agency.url + "/login", auth=paused_agency.auth("alice"), timeout=10).json()
    assert tokens["username"] == paused_agency.name("alice")
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert requests.get(paused_agency.url + "/batches", headers=bearer, timeout=10).status_code == 200
    forged = {"Authorization": f"Bearer {tokens['access_token'][:-2]}00"}
    assert requests.get(paused_agency.url + "/batches", headers=forged, timeout=10).status_code == 401
    refresh = {"Authorization": f"Bearer {tokens['refresh_token']}"}
    assert requests.get(paused_agency.url + "/batches", headers=refresh, timeout=10).status_code == 401
    renewed = requests.post(paused_agency.url + "/refreshtoken", headers=refresh, timeout=10).json()
    assert requests.get(paused_agency.url + "/version", headers={"Authorization": f"Bearer {renewed['access_token']}"}, timeout=10).status_code == 200


def test_schema_and_nodes(paused_agency):
    schema = paused_agency.get("/schema/red", user=None)
    assert schema.status_code == 200 and isinstance(schema.json(), dict)
    nodes = paused_agency.get("/nodes").json()
    assert nodes[0]["nodeName"] and nodes[0]["state"] == "online" and nodes[0]["currentBatches"] == []


def test_user_add_command_creates_a_working_login(paused_agency):
    from agency_helpers import faice

    result = faice("agency", "user", "add", "carol-cli", "--db", paused_agency.db_url, "--password-stdin", input="carol secret\n")
    assert result.returncode == 0, result.stderr
    assert requests.get(paused_agency.url + "/version", auth=("carol-cli", "carol secret"), timeout=10).status_code == 200
    assert requests.get(paused_agency.url + "/version", auth=("carol-cli", "carol"), timeout=10).status_code == 401
