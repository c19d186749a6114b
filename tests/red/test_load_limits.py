"""Loading: size limits (files, stdin, URLs with a deadline) and syntax errors that show where
the unclosed quote or bracket began as well as where the parser gave up."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from faice.errors import LoadError, ParseError
from faice.red import load
from faice.red.load import load_mapping

VALID = Path(__file__).resolve().parents[1] / "data" / "red" / "valid" / "minimal.json"


def test_an_unclosed_quote_names_the_line_where_it_began(tmp_path):
    path = tmp_path / "quote.red.yml"
    path.write_text("redVersion: '9'\ndoc: \"never closed\ncli: {}\ninputs: {}\n")
    with pytest.raises(ParseError) as error:
        load_mapping(str(path))
    message = str(error.value)
    assert message.startswith(f"{path}:5:1: invalid YAML: found unexpected end of stream")
    assert "while scanning a quoted scalar that began at line 2, column 6" in message
    assert (error.value.problem.line, error.value.problem.column) == (5, 1)


def test_an_unclosed_bracket_names_the_line_where_it_began(tmp_path):
    path = tmp_path / "bracket.red.yml"
    path.write_text("redVersion: '9'\ncli:\n  baseCommand: [echo, hi\n  inputs: {}\n")
    with pytest.raises(ParseError) as error:
        load_mapping(str(path))
    assert "while parsing a flow sequence that began at line 3, column 16" in str(error.value)


def test_a_json_syntax_error_has_line_and_column(tmp_path):
    path = tmp_path / "bad.red.json"
    path.write_text('{"redVersion": "9",\n "cli": {"inputs": [1, 2}\n}\n')
    with pytest.raises(ParseError, match=rf"^{path}:2:25: invalid JSON"):
        load_mapping(str(path))


def test_a_file_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("FAICE_MAX_RED_BYTES", "1000")
    path = tmp_path / "big.red.yml"
    path.write_text("doc: " + "x" * 2000 + "\n")
    with pytest.raises(LoadError, match="larger than 1,000 bytes"):
        load_mapping(str(path))
    path.write_text("doc: " + "x" * 900 + "\n")
    assert len(load_mapping(str(path)).data["doc"]) == 900


def test_stdin_over_the_size_limit_is_refused(monkeypatch):
    monkeypatch.setenv("FAICE_MAX_RED_BYTES", "1000")
    monkeypatch.setattr("sys.stdin", io.StringIO("doc: " + "x" * 5000))
    with pytest.raises(LoadError, match="<stdin>: larger than 1,000 bytes"):
        load_mapping("-")


# ---------------------------------------------------------------- URLs


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = VALID.read_bytes()
        if self.path == "/valid.json":
            self._send(body, length=True)
        elif self.path == "/big.json":
            self._send(b" " * 50_000 + body, length=True)
        elif self.path == "/big-chunked.json":
            self._send(b" " * 50_000 + body, length=False)
        elif self.path == "/slow.json":
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for byte in body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)

    def _send(self, body: bytes, *, length: bool) -> None:
        self.send_response(200)
        if length:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, len(body), 4096):
            chunk = body[start : start + 4096]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_red_file_from_a_url_is_read(server):
    assert load_mapping(f"{server}/valid.json").data["redVersion"] == "9"


@pytest.mark.parametrize("name", ["big.json", "big-chunked.json"])
def test_a_red_file_from_a_url_is_read_only_up_to_the_size_limit(server, monkeypatch, name):
    monkeypatch.setenv("FAICE_MAX_RED_BYTES", "10000")
    url = f"{server}/{name}"
    with pytest.raises(LoadError) as error:
        load_mapping(url)
    assert str(error.value).startswith(f"{url}: larger than 10,000 bytes")


def test_a_slow_url_is_given_up_after_the_deadline(server, monkeypatch):
    monkeypatch.setattr(load, "URL_DEADLINE_S", 1.0)
    start = time.monotonic()
    with pytest.raises(LoadError, match=r"slow\.json: could not download: not complete after 1 s"):
        load_mapping(f"{server}/slow.json")
    assert time.monotonic() - start < 5


def test_a_control_character_is_reported_at_its_line_and_column(tmp_path):
    path = tmp_path / "ctrl.red.yml"
    path.write_bytes(b'redVersion: "9"\ndoc: a\x01b\n')
    with pytest.raises(ParseError, match=rf"^{path}:2:7: invalid YAML: character U\+0001 is not allowed"):
        load_mapping(str(path))


def test_a_key_repeated_in_json_is_refused_where_it_is_as_in_yaml(tmp_path):
    """json.loads kept the last of two "container" keys silently; YAML refused the same file."""
    path = tmp_path / "twice.red.json"
    path.write_text('{"redVersion": "9",\n "redVersion": "8"}')
    with pytest.raises(ParseError, match=rf'^{path}:2:2: .*duplicate key "redVersion"'):
        load_mapping(str(path))


def test_text_that_is_not_utf8_is_refused_at_its_line_and_column(tmp_path):
    """A Latin-1 file was refused with a byte offset only."""
    path = tmp_path / "latin1.red.yml"
    path.write_bytes('redVersion: "9"\ndoc: w\xf6rd\n'.encode("latin-1"))
    with pytest.raises(ParseError, match=rf"^{path}:2:7: not UTF-8 text \(invalid start byte at byte 22\)"):
        load_mapping(str(path))
