"""Logs streamed while a batch runs never write a secret, however the chunks fall."""

from __future__ import annotations

from faice.pipeline.logstream import LogStream
from faice.secrets import Redactor

SECRET = "pa55-w0rd-of-the-db"


def chunks(data: bytes, size: int, target, seen: list[bytes]):
    for start in range(0, len(data), size):
        seen.append(target.read_bytes() if target.exists() else b"")  # what a reader sees meanwhile
        yield data[start:start + size]


def test_a_secret_split_across_chunks_never_reaches_the_file_nor_the_display(tmp_path):
    data = f"connecting with {SECRET} now\nsecond {SECRET}\nlast {SECRET}".encode()
    for size in (1, 3, 7, 16, 64):
        target = tmp_path / f"stdout-{size}.txt"
        seen: list[bytes] = []
        passes = iter([chunks(data, size, target, seen), iter([data])])  # followed, then complete
        stream = LogStream(lambda passes=passes: next(passes), target, Redactor([SECRET]))
        assert stream.finish(10)
        assert target.read_bytes() == b"connecting with ******** now\nsecond ********\nlast ********"
        assert not any(SECRET.encode() in text for text in seen)
        assert stream.last_line == "second ********"


def test_bytes_a_followed_stream_missed_are_appended_once_the_container_exited(tmp_path):
    """Docker can end a followed log stream before its last bytes: the complete log fills the gap."""
    target = tmp_path / "stdout.txt"
    full = f"one\ntwo {SECRET}\nthree".encode()
    passes = iter([iter([full[:6]]), iter([full[:4], full[4:]])])  # the first pass stops inside the secret
    stream = LogStream(lambda passes=passes: next(passes), target, Redactor([SECRET]))
    assert stream.finish(10)
    assert target.read_bytes() == b"one\ntwo ********\nthree"
