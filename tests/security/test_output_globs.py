"""Output globs never reveal file names outside the batch (issue 19): a glob filled from an
input (``$(inputs.w)``) or going through a link the container made was expanded on the host,
and the batch's failure message ("ambiguous: 2 matches (…)", "matched … outside /cc/outputs")
listed the names of a directory only the server may read."""

from __future__ import annotations

import agency_reds as reds

from faice.cwl.outputs import collect

SECRET_NAMES = ("payroll-2026-secret.csv", "merger-plan-secret.txt")


def _secret_dir(tmp_path):
    secret = tmp_path / "server-only"
    secret.mkdir()
    for name in SECRET_NAMES:
        (secret / name).write_text("x")
    return secret


def _red(pattern: str) -> dict:
    red = reds.minimal(command="true")
    red["cli"]["inputs"]["w"] = {"type": "string", "inputBinding": {"position": 1}}
    red["inputs"]["w"] = pattern
    red["cli"]["outputs"] = {"o": {"type": "File", "outputBinding": {"glob": "$(inputs.w)"}}}
    red["outputs"] = {"o": {"class": "File", "connector": {"command": "http", "access": {"url": "http://127.0.0.1:1/o"}}}}
    return red


def test_an_agency_users_glob_names_no_server_file(make_agency, tmp_path, test_image):
    secret = _secret_dir(tmp_path)
    server = make_agency("--parallel", "2")
    for pattern in (f"{secret}/*", "../" * 30 + f"{str(secret).lstrip('/')}/*"):
        (batch_id,) = server.batch_ids(server.submit(_red(pattern), disableConnectorValidation="true"))
        batch = server.wait_state(batch_id)
        text = str(batch) + server.get(f"/batches/{batch_id}/stderr").text
        assert not any(name in text for name in SECRET_NAMES), text
        assert batch["state"] == "failed" and "leaves /cc/outputs" in text, batch


def test_a_glob_never_lists_a_host_directory_through_a_link(tmp_path):
    secret = _secret_dir(tmp_path)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "d").symlink_to(secret, target_is_directory=True)  # made by the container
    (outputs / "ok.txt").write_text("mine")
    found = {c.key: c for c in collect(outputs, {"a": "d/*", "b": "d/*.csv", "c": "*.txt"},
                                       {"a": "File", "b": "File", "c": "File"}, {})}
    for key in ("a", "b"):
        assert found[key].path is None and found[key].problem, found[key]
        assert not any(name in found[key].problem for name in SECRET_NAMES), found[key].problem
    assert found["c"].path == outputs / "ok.txt" and found["c"].problem is None
