"""The connector policy of ``faice agency serve``: a user's RED file never reaches the server's
own files, programs or cloud identity (issue 12, item 1), against the real server."""

from __future__ import annotations

import json
import os

import agency_reds as reds
import pytest
from agency_helpers import faice
from security_helpers import file_input_red, file_output_red, stored_text

from faice.connectors.policy import Policy, check, load_policy, policy_from
from faice.errors import UsageError

CANARY = "canary-7f3a9c-not-for-users"


def _refused(server, red, key_path: str, words: str, user: str = "alice") -> str:
    response = server.post_red(red, user)
    assert response.status_code == 400, response.text
    text = response.json()
    assert f"{key_path}: " in text and words in text, text
    assert server.get("/experiments/count", user).json() == {"count": 0}  # nothing stored
    return text


def _policy_file(tmp_path, data) -> str:
    path = tmp_path / "policy.yml"
    path.write_text(json.dumps(data))
    return str(path)


def test_default_policy_refuses_the_servers_key_and_any_host_file(make_agency):
    server = make_agency("--paused")
    key = server.dir / "agency.key"
    _refused(server, file_input_red({"command": "file", "access": {"path": str(key)}}),
             "inputs.f.connector.access.path", "not under an allowed root")
    _refused(server, file_input_red({"command": "file", "access": {"path": "~/.ssh/id_ed25519"}}),
             "inputs.f.connector.access.path", "not under an allowed root")
    _refused(server, file_output_red({"command": "file", "access": {"path": str(server.dir / "planted")}}),
             "outputs.o.connector.access.path", "not under an allowed root")
    assert key.read_text().strip() not in stored_text(server)


def test_key_path_names_the_batch(make_agency):
    server = make_agency("--paused")
    red = reds.multi_batch(["a", "b"])
    red["cli"]["inputs"]["f"] = {"type": "File", "inputBinding": {"position": 1}}
    red["batches"][0]["inputs"]["f"] = {"class": "File", "connector": {"command": "http", "access": {"url": "http://127.0.0.1:1/x"}}}
    red["batches"][1]["inputs"]["f"] = {"class": "File", "connector": {"command": "file", "access": {"path": "/etc/shadow"}}}
    _refused(server, red, "batches[1].inputs.f.connector.access.path", "not under an allowed root")


@pytest.mark.parametrize("command", ["sh", "/bin/sh", "cat", "red-connector-unknown"])
def test_external_connector_programs_are_refused_unless_listed(make_agency, command):
    server = make_agency("--paused")
    _refused(server, file_input_red({"command": command, "access": {"a": 1}}),
             "inputs.f.connector.command", "is not allowed")


def test_s3_without_auth_refused_by_default_allowed_by_policy(make_agency, tmp_path):
    red = file_input_red({"command": "s3", "access": {"url": "s3://bucket/key", "endpointUrl": "http://127.0.0.1:5055"}})
    _refused(make_agency("--paused"), red, "inputs.f.connector.access", "host's own AWS credentials")
    allowing = make_agency("--paused", "--policy", _policy_file(tmp_path, {"s3WithoutAuth": True}))
    assert allowing.post_red(red).status_code == 200
    with_auth = file_input_red({"command": "s3", "access": {"url": "s3://bucket/k", "auth": {"accessKeyId": "a", "secretAccessKey": "b"}}})
    assert make_agency("--paused").post_red(with_auth).status_code == 200


def test_known_hosts_file_must_not_point_at_the_server(make_agency):
    server = make_agency("--paused")
    access = {"host": "127.0.0.1", "port": 2222, "auth": {"username": "u", "password": "p"}, "filePath": "/x",
              "knownHostsFile": str(server.dir / "agency.key")}
    _refused(server, file_input_red({"command": "ssh", "access": access}),
             "inputs.f.connector.access.knownHostsFile", "not under an allowed root")
    del access["knownHostsFile"]  # the server's own default stays allowed
    assert server.post_red(file_input_red({"command": "ssh", "access": access})).status_code == 200


def test_servers_own_files_refused_even_under_an_allowed_root(make_agency, tmp_path):
    # the whole server directory is an allowed root: its database, key and work dir still are not
    policy_path = tmp_path / "policy.yml"
    server = make_agency("--paused", "--policy", str(policy_path), start=False)
    policy_path.write_text(json.dumps({"fileRoots": [str(server.dir), str(tmp_path)]}))
    server.start()
    data = server.dir / "data.txt"
    data.write_text("fine\n")
    os.symlink(server.dir / "agency.key", server.dir / "innocent.txt")
    for target in ["agency.key", "agency.db", "agency.db-wal", "work", "innocent.txt", "."]:
        _refused(server, file_input_red({"command": "file", "access": {"path": str(server.dir / target)}}),
                 "inputs.f.connector.access.path", "files of the server itself")
    _refused(server, file_input_red({"command": "file", "access": {"path": str(policy_path)}}),
             "inputs.f.connector.access.path", "files of the server itself")
    _refused(server, file_input_red({"command": "file", "access": {"path": str(server.dir / "sub" / ".." / "agency.key")}}),
             "inputs.f.connector.access.path", "files of the server itself")
    assert server.post_red(file_input_red({"command": "file", "access": {"path": str(data)}})).status_code == 200
    assert (server.dir / "agency.key").read_text().strip() not in stored_text(server)


@pytest.mark.docker
def test_allowed_root_file_is_staged_and_nothing_else(make_agency, tmp_path, test_image):
    root = tmp_path / "shared-data"
    root.mkdir()
    (root / "input.txt").write_text(CANARY + "-allowed\n")
    server = make_agency("--parallel", "1", "--policy", _policy_file(tmp_path, {"fileRoots": [str(root)]}))
    experiment = server.submit(file_input_red({"command": "file", "access": {"path": str(root / "input.txt")}}))
    batch_id = server.batch_ids(experiment)[0]
    assert server.wait_state(batch_id)["state"] == "succeeded", server.log.read_text()[-2000:]
    assert server.get(f"/batches/{batch_id}/stdout").text == CANARY + "-allowed\n"


def test_bad_policy_file_is_a_clear_startup_error(tmp_path):
    policy = _policy_file(tmp_path, {"fileRoot": ["/data"]})
    result = faice("agency", "serve", "--db", f"sqlite:///{tmp_path / 'a.db'}", "--port", "1", "--policy", policy, timeout=60)
    assert result.returncode != 0
    assert "unknown key 'fileRoot'" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- the pure module


def test_policy_loader_types_and_symlinked_roots(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    (tmp_path / "p.yml").write_text("fileRoots: [%s]\nexternalPrograms: [my-conn]\n" % (tmp_path / "link"))
    policy = load_policy(str(tmp_path / "p.yml"))
    assert policy.file_roots == (real,) and policy.external_programs == ("my-conn",)
    with pytest.raises(UsageError, match="s3WithoutAuth: expected true or false"):
        policy_from({"s3WithoutAuth": "yes"})
    with pytest.raises(UsageError, match="fileRoots: expected a list"):
        policy_from({"fileRoots": "/data"})


def test_check_covers_lists_of_files_and_restricted_connectors(tmp_path):
    data = {"inputs": {"many": [{"class": "File", "connector": {"command": "http", "access": {"url": "http://x/"}}},
                                {"class": "File", "connector": {"command": "file", "access": {"path": str(tmp_path)}}}]}}
    assert [p.path for p in check(Policy(file_roots=(tmp_path,)), data)] == []
    assert [p.path for p in check(Policy(), data)] == [("inputs", "many", 1, "connector", "access", "path")]
    only_http = Policy(connectors=("s3",), file_roots=(tmp_path,))
    assert [p.path for p in check(only_http, data)] == [("inputs", "many", 0, "connector", "command"),
                                                         ("inputs", "many", 1, "connector", "command")]
