"""Symbolic links in outputs never send host files (issue 12, item 3, output side).

A hostile container leaves ``results/leak -> <a host file>`` in its outputs. For every
built-in connector that uploads (file, s3 on moto, ssh on the real sshd, http on the test
nginx) the upload is refused with a message naming the output and the link, and the
canary's content never reaches the destination — through the framework
(:class:`StagingSession`) *and* when the connector is called directly, so that a plugin bug
in either place cannot bring the leak back. Links that stay inside the output still work.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from faice.connectors import Progress
from faice.connectors.registry import resolve
from faice.connectors.staging import ConnectorRequest, StagingSession
from faice.connectors.trees import OutputLinkError, output_file, output_tree
from faice.cwl.outputs import collect
from faice.errors import ConnectorError

SECRET = b"canary: a host secret that must never leave this machine\n"
LABEL = "batches[0].outputs.results"


@pytest.fixture
def canary(tmp_path) -> Path:
    path = tmp_path / "host" / "id_ed25519"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


def leaky_tree(root: Path, canary: Path, how: str) -> Path:
    """``outputs/results`` with honest files and one escaping link of the kind ``how``."""
    results = root / "outputs" / "results"
    (results / "sub").mkdir(parents=True)
    (results / "honest.txt").write_bytes(b"honest\n")
    (results / "sub" / "more.txt").write_bytes(b"more\n")
    if how == "file-link":
        (results / "sub" / "leak").symlink_to(canary)
    elif how == "relative-link":
        (results / "leak").symlink_to(os.path.relpath(canary, results))
    elif how == "dir-link":
        (results / "leak").symlink_to(canary.parent, target_is_directory=True)
    elif how == "chain":  # an in-tree link to an in-tree link that leaves
        (results / "hop").symlink_to(canary)
        (results / "leak").symlink_to("hop")
    return results


def honest_tree_with_inner_links(root: Path) -> Path:
    results = root / "outputs" / "results"
    (results / "ckpt" / "epoch-3").mkdir(parents=True)
    (results / "ckpt" / "epoch-3" / "weights.bin").write_bytes(b"w" * 1000)
    (results / "latest.bin").symlink_to("ckpt/epoch-3/weights.bin")
    (results / "last-epoch").symlink_to("ckpt/epoch-3", target_is_directory=True)
    (results / "dangling").symlink_to("not-there")
    os.mkfifo(results / "fifo")  # no content to send, and must not block the upload
    return results


EXPECTED_INNER = {
    "ckpt/epoch-3/weights.bin": b"w" * 1000,
    "latest.bin": b"w" * 1000,
    "last-epoch/weights.bin": b"w" * 1000,
}


# ---------------------------------------------------------------------- destinations


class FileDest:
    command = "file"

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "dest"

    def access(self) -> dict:
        return {"path": str(self.root)}

    def received(self) -> dict[str, bytes]:
        return {p.relative_to(self.root).as_posix(): p.read_bytes()
                for p in sorted(self.root.rglob("*")) if p.is_file()} if self.root.exists() else {}


class S3Dest:
    command = "s3"

    def __init__(self, server, bucket: str) -> None:
        self.server, self.bucket = server, bucket

    def access(self) -> dict:
        return {"url": f"s3://{self.bucket}/out/", "endpointUrl": self.server.url, "region": self.server.region,
                "auth": {"accessKeyId": "testing", "secretAccessKey": "faice-open-secret"}}

    def received(self) -> dict[str, bytes]:
        client = self.server.client()
        found = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for obj in page.get("Contents", []):
                found[obj["Key"][len("out/"):]] = client.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
        return found


class SshDest:
    command = "ssh"

    def __init__(self, server, known_hosts: Path) -> None:
        self.server, self.known_hosts = server, known_hosts
        self.prefix = f"sec-{uuid.uuid4().hex[:10]}"
        self.root = server.home / "data" / self.prefix

    def access(self) -> dict:
        return {"host": self.server.host, "port": self.server.port,
                "auth": {"username": self.server.user, "password": self.server.password},
                "hostKeyPolicy": "strict", "knownHostsFile": str(self.known_hosts),
                "dirPath": f"data/{self.prefix}/out"}

    def received(self) -> dict[str, bytes]:
        base = self.root / "out"
        return {p.relative_to(base).as_posix(): p.read_bytes()
                for p in sorted(base.rglob("*")) if p.is_file()} if base.exists() else {}


class HttpDest:
    command = "http"

    def __init__(self, server) -> None:
        self.server = server
        self.prefix = f"sec-{uuid.uuid4().hex[:10]}"
        self.root = server.root / self.prefix

    def access(self) -> dict:
        return {"url": f"{self.server.url}/{self.prefix}/out", "method": "PUT",
                "auth": {"username": self.server.user, "password": self.server.password}}

    def received(self) -> dict[str, bytes]:
        base = self.root / "out"
        return {p.relative_to(base).as_posix(): p.read_bytes()
                for p in sorted(base.rglob("*")) if p.is_file()} if base.exists() else {}


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3),
                        pytest.param("ssh", marks=pytest.mark.ssh), pytest.param("http", marks=pytest.mark.http)])
def dest(request, tmp_path):
    if request.param == "file":
        yield FileDest(tmp_path)
    elif request.param == "s3":
        yield S3Dest(request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket"))
    elif request.param == "ssh":
        server = request.getfixturevalue("ssh_server")
        known_hosts = tmp_path / "known_hosts"
        shutil.copy(server.known_hosts, known_hosts)
        place = SshDest(server, known_hosts)
        yield place
        shutil.rmtree(place.root, ignore_errors=True)
    else:
        place = HttpDest(request.getfixturevalue("http_server"))
        yield place
        shutil.rmtree(place.root, ignore_errors=True)


def _leaked(received: dict[str, bytes]) -> bool:
    return any(SECRET in data for data in received.values())


# ---------------------------------------------------------------------- every connector


@pytest.mark.parametrize("how", ["file-link", "relative-link", "dir-link", "chain"])
def test_escaping_link_in_a_directory_output_is_refused(dest, tmp_path, canary, how):
    results = leaky_tree(tmp_path, canary, how)
    with StagingSession(tmp_path / "w") as session, pytest.raises(ConnectorError) as caught:
        session.send(ConnectorRequest(LABEL, dest.command, dest.access()), "Directory", results)
    message = caught.value.message
    assert LABEL in message and "refusing symbolic link" in message and "leaves the output directory" in message
    assert ("'sub/leak'" if how == "file-link" else "'leak'" if how != "chain" else "'hop'") in message
    assert "Traceback" not in message
    assert not _leaked(dest.received())
    assert canary.read_bytes() == SECRET


def test_connector_itself_refuses_an_escaping_link(dest, tmp_path, canary):
    """Called without the framework's check, the built-in connector still refuses."""
    results = leaky_tree(tmp_path, canary, "file-link")
    connector = resolve(dest.command)
    try:
        with pytest.raises(OutputLinkError, match="'sub/leak'"):
            connector.send_dir(dest.access(), results, None, Progress())
    finally:
        connector.close()
    assert not _leaked(dest.received())


def test_links_inside_the_output_are_sent_as_their_content(dest, tmp_path):
    results = honest_tree_with_inner_links(tmp_path)
    with StagingSession(tmp_path / "w") as session:
        session.send(ConnectorRequest(LABEL, dest.command, dest.access()), "Directory", results)
    assert dest.received() == EXPECTED_INNER


def test_file_output_that_links_out_is_refused(dest, tmp_path, canary):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "weights.bin").symlink_to(canary)
    access = dest.access()
    if dest.command == "ssh":
        access = {k: v for k, v in access.items() if k != "dirPath"} | {"filePath": f"data/{dest.prefix}/out/w.bin"}
    elif dest.command == "file":
        access = {"path": str(dest.root / "w.bin")}
    else:
        access["url"] = access["url"] + "/w.bin" if dest.command == "http" else access["url"] + "w.bin"
    with StagingSession(tmp_path / "w") as session, pytest.raises(ConnectorError) as caught:
        session.send(ConnectorRequest("batches[0].outputs.weights", dest.command, access), "File",
                     outputs / "weights.bin", root=outputs)
    assert "batches[0].outputs.weights" in caught.value.message and "weights.bin" in caught.value.message
    assert str(canary) in caught.value.message  # says where the link points
    assert not _leaked(dest.received())


# ---------------------------------------------------------------------- the helpers themselves


def test_listing_cannot_name_a_file_behind_an_escaping_link(tmp_path, canary):
    results = leaky_tree(tmp_path, canary, "dir-link")
    listing = [{"class": "Directory", "basename": "leak", "listing": [{"class": "File", "basename": canary.name}]}]
    with pytest.raises(OutputLinkError, match="'leak'"):
        output_tree(results, listing)


def test_loops_are_refused_not_followed_forever(tmp_path):
    results = tmp_path / "results"
    (results / "a").mkdir(parents=True)
    (results / "a" / "back").symlink_to("..", target_is_directory=True)
    with pytest.raises(OutputLinkError, match="'a/back'.*loops back"):
        output_tree(results)


def test_directory_output_that_is_a_link_out_is_refused(tmp_path, canary):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "results").symlink_to(canary.parent, target_is_directory=True)
    with pytest.raises(OutputLinkError, match="refusing output directory 'results'"):
        output_tree(outputs / "results", root=outputs)


def test_file_output_inside_is_resolved(tmp_path):
    outputs = tmp_path / "outputs"
    (outputs / "ckpt").mkdir(parents=True)
    (outputs / "ckpt" / "w.bin").write_bytes(b"w")
    (outputs / "latest").symlink_to("ckpt/w.bin")
    assert output_file(outputs / "latest", outputs) == (outputs / "ckpt" / "w.bin").resolve()


def test_entry_limit_bounds_link_expansion(tmp_path):
    """Links to one directory from many places multiply a tree; the walk is bounded."""
    results = tmp_path / "results"
    (results / "d0").mkdir(parents=True)
    (results / "d0" / "f").write_bytes(b"x")
    for level in range(1, 12):
        (results / f"d{level}").mkdir()
        for name in ("a", "b"):
            (results / f"d{level}" / name).symlink_to(f"../d{level - 1}", target_is_directory=True)
    with pytest.raises(Exception, match="more than 1000 entries"):
        output_tree(results, max_entries=1000)


# ---------------------------------------------------------------------- glob collection


def test_glob_collection_refuses_a_link_out_of_cc_outputs(tmp_path, canary):
    workdir = tmp_path / "outputs"
    workdir.mkdir()
    (workdir / "model.bin").symlink_to(canary)
    (workdir / "logs").symlink_to(canary.parent, target_is_directory=True)
    found = {c.key: c for c in collect(workdir, {"model": "*.bin", "logs": "logs"},
                                       {"model": "File?", "logs": "Directory"}, {})}
    assert found["model"].path is None and "outside /cc/outputs" in found["model"].problem
    assert "model.bin -> " + str(canary) in found["model"].problem
    assert found["logs"].path is None and "outside /cc/outputs" in found["logs"].problem


# ---------------------------------------------------------------------- a real container


@pytest.mark.docker
@pytest.mark.parametrize("planted", ["file-output", "directory-entry"])
def test_container_planting_links_to_a_host_secret_gets_nothing_out(tmp_path, canary, test_image, planted):
    """A batch whose container links its outputs to a host file: the run fails with a clear
    reason, the host file's content reaches neither the destination nor the run's records."""
    import json

    from faice.pipeline.options import RunOptions
    from faice.pipeline.run import run_experiment
    from faice.red.prepare import load_experiment

    dest = tmp_path / "dest"
    script = f"mkdir results && echo honest > results/ok.txt && ln -s {canary} results/leak"
    if planted == "file-output":
        script += f" && ln -s {canary} model.bin"
    red = {
        "redVersion": "9",
        "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["sh", "-c"],
                "inputs": {"script": {"type": "string", "inputBinding": {"position": 0}}},
                "outputs": {"results": {"type": "Directory", "outputBinding": {"glob": "results"}},
                            "model": {"type": "File?", "outputBinding": {"glob": "*.bin"}}}},
        "inputs": {"script": script},
        "outputs": {"results": {"class": "Directory", "connector": {"command": "file",
                                                                    "access": {"path": str(dest / "results")}}},
                    "model": {"class": "File", "connector": {"command": "file",
                                                             "access": {"path": str(dest / "model.bin")}}}},
        "container": {"engine": "docker", "settings": {"image": {"url": test_image}}},
        "execution": {"engine": "ccfaice", "settings": {}},
    }
    path = tmp_path / "leak.red.json"
    path.write_text(json.dumps(red))
    summary = run_experiment(load_experiment(str(path)), RunOptions(), tmp_path / "run")
    assert summary.exit_code != 0
    records = [p.read_text(errors="replace") for p in (tmp_path / "run").rglob("*")
               if p.is_file() and not p.is_symlink()]  # the planted links themselves stay in outputs/
    if planted == "file-output":  # refused when collected: the batch never reaches stage-out
        assert any("outside /cc/outputs" in text and "model.bin" in text for text in records)
    else:  # refused at stage-out, naming the output and the link
        assert any("outputs.results: send-dir refused: refusing symbolic link 'leak'" in text for text in records)
    received = [p.read_bytes() for p in dest.rglob("*") if p.is_file()] if dest.exists() else []
    assert not any(p.is_symlink() for p in dest.rglob("*")) if dest.exists() else True
    assert not any(SECRET in data for data in received)
    assert not any(SECRET.decode() in text for text in records)
