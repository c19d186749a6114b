"""The ``file`` connector: host paths, through the conformance suite, plus its own rules."""

from __future__ import annotations

import pytest

from faice.connectors.staging import ConnectorRequest, StagingSession
from faice.connectors.testing import ConnectorConformance
from faice.errors import ConnectorError


class HostPlace:
    def __init__(self, root):
        self.root = root

    def file(self, name):
        return {"path": str(self.root / name)}

    def dir(self, name):
        return {"path": str(self.root / name)}

    def missing_file(self):
        return {"path": str(self.root / "does-not-exist.bin")}

    def bad_credentials(self, operation):
        return None

    def unreachable(self):
        return None


class TestFileConnector(ConnectorConformance):
    command = "file"

    @pytest.fixture
    def place(self, tmp_path):
        root = tmp_path / "host"
        root.mkdir()
        return HostPlace(root)


def test_output_refuses_to_replace_a_directory_with_a_file(tmp_path):
    (tmp_path / "target").mkdir()
    src = tmp_path / "out.txt"
    src.write_text("x")
    req = ConnectorRequest("batches[0].outputs.result", "file", {"path": str(tmp_path / "target")})
    with StagingSession(tmp_path / "w") as session, pytest.raises(ConnectorError) as err:
        session.send(req, "File", src)
    assert "batches[0].outputs.result" in str(err.value) and "is a directory" in str(err.value)
    assert (tmp_path / "target").is_dir()


def test_output_creates_parent_directories(tmp_path):
    src = tmp_path / "out.txt"
    src.write_text("result")
    target = tmp_path / "a" / "b" / "result.txt"
    with StagingSession(tmp_path / "w") as session:
        session.send(ConnectorRequest("o", "file", {"path": str(target)}), "File", src)
    assert target.read_text() == "result"


def test_schema_requires_path(tmp_path):
    with StagingSession(tmp_path) as session, pytest.raises(ConnectorError) as err:
        session.validate(ConnectorRequest("batches[2].inputs.x", "file", {"pth": "/x"}), "receive-file")
    assert "batches[2].inputs.x.connector.access: missing required key 'path'" in str(err.value)
