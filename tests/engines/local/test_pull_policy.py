"""``faice exec --pull missing|always|never``: when the image is pulled, and a moved tag noticed.

No registry is reachable from the test machine, so every image ref here names
``127.0.0.1:9`` (nothing listens there: a real pull fails at once and never leaves the host).
An image present under such a ref can only be run, never pulled, which tells whether faice
pulled. The moved-tag test stands in for the registry: its Docker client's ``api.pull`` re-tags
another local image under the ref (what a pull of a rebuilt ``:latest`` does); everything
else is the real Docker engine.
"""

from __future__ import annotations

import json
import uuid

import pytest
from engine_helpers import sh_red

from faice.cli import main
from faice.errors import EngineError, UsageError
from faice.pipeline.host import Host
from faice.pipeline.options import RunOptions
from faice.pipeline.run import HostRun, run_experiment
from faice.red.prepare import load_experiment
from faice.runtime.docker import DockerRuntime, repo_digest
from faice.runtime.gpus import host_allocator

pytestmark = pytest.mark.docker


@pytest.fixture
def local_ref(docker_client, test_image):
    """The test image under a ref that cannot be pulled (its registry does not exist)."""
    ref = f"127.0.0.1:9/faice-pull-{uuid.uuid4().hex[:8]}/image:1"
    docker_client.images.get(test_image).tag(ref)
    yield ref
    docker_client.images.remove(ref, noprune=True)


def test_never_with_an_absent_image_is_a_clear_error(tmp_path, docker_client):
    red = sh_red(tmp_path / "r.json", "true", "127.0.0.1:9/faice-absent/image:1")
    for options in (RunOptions(pull="never"), RunOptions(disable_pull=True)):
        with pytest.raises(EngineError, match=r"image '127.0.0.1:9/faice-absent/image:1' is not present "
                                              r"and pulling is off \(--pull never"):
            run_experiment(load_experiment(str(red)), options, tmp_path / uuid.uuid4().hex)


def test_missing_and_never_run_a_present_image_without_pulling(tmp_path, local_ref, docker_client):
    red = sh_red(tmp_path / "r.json", "echo ran", local_ref)
    expected = docker_client.images.get(local_ref).id
    for policy in ("missing", "never"):
        summary = run_experiment(load_experiment(str(red)), RunOptions(pull=policy), tmp_path / policy)
        assert summary.exit_code == 0, summary.to_dict()
        run = json.loads((tmp_path / policy / "run.json").read_text())
        assert run["image"]["id"] == expected
        assert run["timings"]["pull"] == 0.0


def test_always_pulls_a_present_image_and_names_it_when_the_registry_is_unreachable(tmp_path, local_ref):
    red = sh_red(tmp_path / "r.json", "true", local_ref)
    with pytest.raises(EngineError, match=rf"pulling '{local_ref}' failed"):
        run_experiment(load_experiment(str(red)), RunOptions(pull="always"), tmp_path / "a")
    assert not (tmp_path / "a" / "batches").exists()


class _RetaggingApi:
    """docker-py's low-level API whose ``pull`` re-tags ``moved_to`` as the ref (the stand-in
    for a registry whose tag moved); every other call goes to the real engine."""

    def __init__(self, api, client, moved_to: str):
        self._api, self._client, self._moved_to = api, client, moved_to
        self.pulls: list[tuple[str, str | None]] = []

    def pull(self, repository, tag=None, **kwargs):
        self.pulls.append((repository, tag))
        self._client.images.get(self._moved_to).tag(repository, tag)
        yield {"status": f"Pulling from {repository}", "id": tag}
        yield {"status": "Status: Downloaded newer image"}

    def __getattr__(self, name):
        return getattr(self._api, name)


class _Client:
    def __init__(self, client, moved_to: str):
        self._client = client
        self.api = _RetaggingApi(client.api, client, moved_to)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_always_notices_a_moved_tag_and_records_the_image_that_ran(tmp_path, local_ref, docker_client, user_image):
    red = sh_red(tmp_path / "r.json", "id -un", local_ref)
    before = docker_client.images.get(local_ref).id
    after = docker_client.images.get(user_image).id
    assert before != after
    client = _Client(docker_client, moved_to=user_image)
    notes: list[str] = []
    run = HostRun(load_experiment(str(red)), RunOptions(pull="always"), tmp_path / "run", on_note=notes.append,
                  host=Host(host_allocator(None, []), runtime=DockerRuntime(client)))
    run.start()
    summary = run.wait(120)
    assert summary is not None and summary.exit_code == 0, summary and summary.to_dict()
    assert client.api.pulls == [(local_ref.rsplit(":", 1)[0], "1")]
    assert f"image {local_ref} moved: was {before}, now {after}" in notes
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["image"]["id"] == after and record["image"]["movedFrom"] == before
    (entry,) = record["batches"]
    batch = json.loads((tmp_path / "run" / "batches" / entry["id"] / "result.json").read_text())
    assert batch["image"]["id"] == after
    # The moved image ran: the user image's user, not root.
    assert (tmp_path / "run" / "batches" / entry["id"] / "stdout.txt").read_text().strip() != "root"


def test_missing_does_not_pull_and_notes_nothing_when_present(tmp_path, local_ref, docker_client, user_image):
    client = _Client(docker_client, moved_to=user_image)
    notes: list[str] = []
    red = sh_red(tmp_path / "r.json", "true", local_ref)
    run = HostRun(load_experiment(str(red)), RunOptions(), tmp_path / "run", on_note=notes.append,
                  host=Host(host_allocator(None, []), runtime=DockerRuntime(client)))
    run.start()
    summary = run.wait(120)
    assert summary is not None and summary.exit_code == 0
    assert client.api.pulls == [] and not any("moved" in n for n in notes)


def test_the_digest_recorded_is_the_one_of_the_refs_repository():
    digests = ["mirror.example/team/app@sha256:aaa", "team/app@sha256:bbb"]
    assert repo_digest("team/app:1", digests) == "team/app@sha256:bbb"
    assert repo_digest("docker.io/library/busybox:1", ["busybox@sha256:ccc"]) == "busybox@sha256:ccc"
    assert repo_digest("other:1", digests) == digests[0]
    assert repo_digest("other:1", []) is None


def test_pull_options_validate_and_travel():
    assert RunOptions(disable_pull=True).pull == "never"
    assert RunOptions.from_dict(RunOptions(pull="always").to_dict()).pull == "always"
    assert RunOptions.from_dict({"disable_pull": True}).pull == "never"  # a record of an older faice
    with pytest.raises(UsageError, match="--pull: expected one of missing, always, never"):
        RunOptions(pull="sometimes")


def test_pull_and_disable_pull_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["exec", "x.red.yml", "--pull", "always", "--disable-pull"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
