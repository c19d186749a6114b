"""Logs streamed while a batch runs never write a secret, however the chunks fall."""

from __future__ import annotations

from faice.pipeline.logstream import OutputCopy
from faice.secrets import Redactor

SECRET = "pa55-w0rd-of-the-db"


def chunks(data: bytes, size: int, targets, seen: list[bytes]):
    """``data`` on stdout and stderr in chunks of ``size``, interleaved; records what a reader
    of the files sees before each chunk."""
    for start in range(0, len(data), size):
        seen.extend(t.read_bytes() if t.exists() else b"" for t in targets.values())
        yield "stdout", data[start:start + size]
        yield "stderr", data[start:start + size]


def test_a_secret_split_across_chunks_never_reaches_the_files_nor_the_display(tmp_path):
    data = f"connecting with {SECRET} now\nsecond {SECRET}\nlast {SECRET}".encode()
    for size in (1, 3, 7, 16, 64):
        targets = {"stdout": tmp_path / f"stdout-{size}.txt", "stderr": tmp_path / f"stderr-{size}.txt"}
        seen: list[bytes] = []
        copy = OutputCopy(chunks(data, size, targets, seen), targets, Redactor([SECRET]))
        assert copy.finish(10)
        for target in targets.values():  # both streams, interleaved on one connection
            assert target.read_bytes() == b"connecting with ******** now\nsecond ********\nlast ********"
        assert not any(SECRET.encode() in text for text in seen)
        assert copy.last_line("stdout") == "second ********"


def test_a_stream_that_breaks_says_so(tmp_path):
    """The batch then fetches the whole log after the exit (tests/pipeline/test_run_batch.py)."""
    def broken():
        yield "stdout", b"one\n"
        raise ConnectionError("attach stream broken")

    targets = {"stdout": tmp_path / "stdout.txt", "stderr": tmp_path / "stderr.txt"}
    copy = OutputCopy(broken(), targets, Redactor([SECRET]))
    assert not copy.finish(10)
    assert isinstance(copy.error, ConnectionError)
    assert targets["stdout"].read_bytes() == b"one\n"
