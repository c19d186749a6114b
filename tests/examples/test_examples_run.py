"""The HTTP, S3, stdout/stderr and random-search examples, run with ``faice exec``.

Each example is copied to a temporary directory with two changes that keep test runs
apart: its image becomes the test image (the same ``faice-test/base:bookworm`` unless
``FAICE_TEST_IMAGE`` names another), and the server-side location (``faice-examples``)
becomes a unique one. Everything else — tool, connectors, variables — is the file users run.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest
from helpers_examples import EXAMPLES, explain, faice

pytestmark = pytest.mark.docker


def _copy_example(tmp_path: Path, relative: str, replacements: dict[str, str]) -> Path:
    text = (EXAMPLES / relative).read_text()
    for old, new in replacements.items():
        assert old in text, f"{relative} no longer contains {old!r}"
        text = text.replace(old, new)
    red = tmp_path / Path(relative).name
    red.write_text(text)
    return red


def _vars(tmp_path: Path, values: dict[str, str]) -> Path:
    path = tmp_path / "vars.yml"
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in values.items()))
    path.chmod(0o600)
    return path


def _run(tmp_path: Path, red: Path, *extra: str, timeout: float = 300):
    outdir = tmp_path / "run"
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    result = faice("exec", red.name, "--non-interactive", "--disable-pull", "--outdir", str(outdir), *extra,
                   cwd=red.parent, env={"HOME": str(home), "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"},
                   timeout=timeout)
    return result, outdir


def _run_summary(outdir: Path) -> dict:
    return json.loads((outdir / "run.json").read_text())


def _assert_secret_absent(secret: str, result, outdir: Path) -> None:
    assert secret not in result.stdout and secret not in result.stderr
    for path in outdir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"secret leaked into {path}"


@pytest.mark.http
def test_http_example_downloads_sorts_and_uploads_with_basic_auth(tmp_path, http_server, test_image):
    folder = f"faice-examples-{uuid.uuid4().hex[:8]}"
    served = http_server.root / folder
    served.mkdir()
    try:
        (served / "words.txt").write_text("pear\napple\nfig\napple\n")
        shutil.chown(served, "www-data", "www-data")
        red = _copy_example(tmp_path, "http/sort-words.red.yml", {
            "faice-test/base:bookworm": test_image,
            "http://127.0.0.1:8088/faice-examples/": f"{http_server.url}/{folder}/",
        })
        variables = _vars(tmp_path, {"http_username": http_server.user, "http_password": http_server.password})
        result, outdir = _run(tmp_path, red, "--variables", str(variables))
        assert result.returncode == 0, explain(result)
        assert (served / "sorted.txt").read_text() == "apple\nfig\npear\n"  # sorted, --unique
        assert _run_summary(outdir)["batches"][0]["state"] == "succeeded"
        _assert_secret_absent(http_server.password, result, outdir)
    finally:
        shutil.rmtree(served, ignore_errors=True)


@pytest.mark.s3
def test_s3_example_counts_words_of_a_prefix_and_writes_a_directory_back(tmp_path, s3_server, s3_bucket, test_image):
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="texts/one.txt", Body=b"one two three\n")
    client.put_object(Bucket=s3_bucket, Key="texts/two.txt", Body=b"a b\nc d e\n")
    red = _copy_example(tmp_path, "s3/word-counts.red.yml", {
        "faice-test/base:bookworm": test_image,
        "s3://faice-examples/": f"s3://{s3_bucket}/",
        "http://127.0.0.1:5055": s3_server.url,
    })
    secret = f"example-secret-{uuid.uuid4().hex}"
    variables = _vars(tmp_path, {"aws_access_key_id": "testing", "aws_secret_access_key": secret})
    result, outdir = _run(tmp_path, red, "--variables", str(variables))
    assert result.returncode == 0, explain(result)
    counts = {
        key: client.get_object(Bucket=s3_bucket, Key=key)["Body"].read().decode().strip()
        for key in ("counts/one.count", "counts/two.count")
    }
    assert counts == {"counts/one.count": "3", "counts/two.count": "5"}
    _assert_secret_absent(secret, result, outdir)


def test_stdout_and_stderr_outputs_reach_the_connector_and_the_run_directory(tmp_path, test_image):
    red = _copy_example(tmp_path, "stdout-stderr/greet.red.yml", {"faice-test/base:bookworm": test_image})
    result, outdir = _run(tmp_path, red)
    assert result.returncode == 0, explain(result)
    # stdout output: sent by the file connector, relative to where faice ran.
    assert (tmp_path / "results" / "greeting.txt").read_text() == "Hello, World!\n"
    # stderr output without connector: kept in the batch's outputs.
    batch_id = _run_summary(outdir)["batches"][0]["id"]
    assert (outdir / "batches" / batch_id / "outputs" / "warnings.txt").read_text() == "warning: World is shouting\n"


def test_random_search_example_draws_reproducible_parameters_and_trains_each(tmp_path, ml_guide_image, pcam_dataset):
    red = _copy_example(tmp_path, "random-search/random-search.red.yml", {})
    shutil.copytree(pcam_dataset, tmp_path / "pcam")

    def planned() -> list[tuple[str, dict]]:
        dry = faice("exec", red.name, "--dry-run", "--json", cwd=tmp_path)
        assert dry.returncode == 0, explain(dry)
        return [(b["id"], b["parameters"]) for b in json.loads(dry.stdout)["batches"]]

    plan = planned()
    assert plan == planned(), "the same seed must give the same draws and batch ids"
    assert len(plan) == 6 and len({batch_id for batch_id, _ in plan}) == 6
    for _, parameters in plan:
        assert 1e-4 <= parameters["learning_rate"] <= 1e-1
        assert parameters["batch_size"] in (16, 32, 64)

    result, outdir = _run(tmp_path, red, "--parallel", "2", timeout=600)
    assert result.returncode == 0, explain(result)
    batches = _run_summary(outdir)["batches"]
    assert sorted((b["id"], b["state"]) for b in batches) == sorted((i, "succeeded") for i, _ in plan)
    for index, (batch_id, parameters) in enumerate(plan):
        outputs = outdir / "batches" / batch_id / "outputs"
        assert (outputs / "weights.h5").read_bytes()[:4] == b"\x89HDF"
        header = (outputs / f"search_{index}.log").read_text().splitlines()[0]
        assert f"learning_rate={parameters['learning_rate']}" in header
        assert f"batch_size={parameters['batch_size']}" in header
    ranked = faice("results", str(outdir), "--format", "json", cwd=red.parent)
    assert ranked.returncode == 0, explain(ranked)
    rows = json.loads(ranked.stdout)
    finals = {}
    for batch_id, _ in plan:  # the last epoch line of each batch's own log: what the data says
        log = next((outdir / "batches" / batch_id / "outputs").glob("search_*.log")).read_text()
        last = [line for line in log.splitlines() if line.startswith("epoch=")][-1]
        finals[batch_id] = float(last.split("val_accuracy=")[1].split()[0])
    assert [row["batch"] for row in rows] == sorted(finals, key=lambda i: (-finals[i], [p[0] for p in plan].index(i)))
    assert rows[0]["best"] and rows[0]["objective"] == max(finals.values())


def test_examples_leave_no_containers(docker_client):
    """Runs above are over: none of their labelled containers may remain."""
    leftovers = [c.name for c in docker_client.containers.list(all=True, filters={"label": "org.faice.run"}, ignore_removed=True)
                 if not c.labels.get("org.faice.test")]
    assert leftovers == [] or os.environ.get("FAICE_PARALLEL_SESSIONS"), leftovers
