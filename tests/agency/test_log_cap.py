"""Batch stdout/stderr kept by the agency are capped per stream, with a visible marker.

A batch that prints without end must not grow the database without end; what is kept is the
tail (where the errors are), and the API and ``faice logs`` say how much was cut.
"""

from __future__ import annotations

import json
import re

import agency_reds as reds
import pytest
from agency_helpers import faice

from faice.agency.db import Database
from faice.agency.store import DEFAULT_LOG_CAP, LOG_CAP_ENV, Store, cap_log
from faice.errors import UsageError

MARKER = re.compile(r"^\[… (\d+) bytes truncated …\]\n")


def _numbers(count: int) -> str:
    return "".join(f"{i}\n" for i in range(1, count + 1))


def _store(**kwargs) -> Store:
    return Store(Database("sqlite:///:memory:"), **kwargs)


# ---------------------------------------------------------------- the store


def test_output_under_the_cap_is_kept_as_is():
    store = _store(log_cap=100)
    store.save_log("b1", "stdout", "x" * 100)
    assert store.log("b1", "stdout") == "x" * 100


def test_output_over_the_cap_keeps_the_tail_and_says_how_much_was_cut():
    full = _numbers(5000)
    store = _store(log_cap=1000)
    store.save_log("b1", "stderr", full)
    kept = store.log("b1", "stderr")
    cut = MARKER.match(kept)
    assert cut, kept[:80]
    assert int(cut.group(1)) == len(full) - 1000
    assert kept[cut.end():] == full[-1000:]


def test_cut_never_splits_a_character():
    full = "é" * 1000 + "end\n"  # 2 bytes each: a cut at an odd offset lands mid-character
    kept = cap_log(full, 501)
    cut = MARKER.match(kept)
    tail = kept[cut.end():]
    assert "\ufffd" not in tail and tail.endswith("end\n")
    assert int(cut.group(1)) + len(tail.encode()) == len(full.encode())
    assert len(tail.encode()) <= 501


def test_cap_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(LOG_CAP_ENV, "64")
    assert _store().log_cap == 64
    monkeypatch.delenv(LOG_CAP_ENV)
    assert _store().log_cap == DEFAULT_LOG_CAP == 4 * 1024 * 1024


@pytest.mark.parametrize("bad", ["0", "-5", "lots"])
def test_bad_cap_is_a_usage_error(monkeypatch, bad):
    monkeypatch.setenv(LOG_CAP_ENV, bad)
    with pytest.raises(UsageError, match=LOG_CAP_ENV):
        _store()


def test_bad_cap_option_stops_the_server_with_one_line(tmp_path):
    result = faice("agency", "serve", "--db", f"sqlite:///{tmp_path / 'a.db'}", "--workdir", str(tmp_path / "w"),
                   "--port", "1", "--max-log-bytes", "0", timeout=60)
    assert result.returncode == 2, result.stderr
    assert "--max-log-bytes" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- a real batch


@pytest.mark.docker
def test_batch_printing_more_than_the_cap(make_agency, test_image, tmp_path):
    server = make_agency("--max-log-bytes", "2000")
    script = "seq 1 20000; seq 1 30000 >&2"
    red = reds.minimal(command=["sh", "-c"], value=script, stdout="stdout.txt", stderr="stderr.txt")
    batch_id = server.batch_ids(server.submit(red))[0]
    batch = server.wait_state(batch_id, timeout=120)
    assert batch["state"] == "succeeded", batch["history"]
    for stream, count in (("stdout", 20000), ("stderr", 30000)):
        full = _numbers(count)
        response = server.get(f"/batches/{batch_id}/{stream}")
        assert response.status_code == 200
        cut = MARKER.match(response.text)
        assert cut, response.text[:80]
        assert int(cut.group(1)) == len(full) - 2000
        assert response.text[cut.end():] == full[-2000:]
    # faice logs prints the same, marker first
    red_file = tmp_path / "red.json"
    red_file.write_text(json.dumps(reds.minimal(server.url, server.name("alice"), "{{agency_password}}")))
    variables = tmp_path / "vars.yml"
    variables.write_text(f"agency_password: {server.users['alice']}\n")
    logs = faice("logs", batch_id, "--red-file", str(red_file), "--variables", str(variables))
    assert logs.returncode == 0, logs.stderr
    assert MARKER.match(logs.stdout) and logs.stdout.endswith("\n20000\n")


def test_a_huge_stream_is_read_back_only_as_far_as_it_can_be_kept(tmp_path):
    from faice.files import read_tail

    stream = tmp_path / "stdout.txt"
    stream.write_text(_numbers(5000))
    size = stream.stat().st_size
    text, skipped = read_tail(stream, limit=1000)
    assert skipped + len(text.encode()) == size and size - 1000 <= skipped < size - 1000 + 6
    assert text.endswith("4999\n5000\n") and text.split("\n")[0].isdigit()
    assert _numbers(5000).endswith(text)  # whole lines only: the cut line is dropped
    kept = cap_log(text, 200, skipped)
    cut = int(MARKER.match(kept).group(1))
    assert cut + len(MARKER.sub("", kept).encode()) == size
    assert cap_log("short\n", 200, 12) == "[… 12 bytes truncated …]\nshort\n"


def test_a_secret_cut_at_the_read_boundary_is_dropped_not_half_kept(tmp_path):
    from faice.files import read_tail

    stream = tmp_path / "stdout.txt"
    secret = "s3cr3t-Pa55w0rd-value"
    stream.write_text("x" * 100 + "\n" + f"token={secret}\n" + "after\n" * 3)
    limit = len("after\n" * 3) + len(secret) // 2 + 1  # the read starts inside the secret
    text, skipped = read_tail(stream, limit=limit)
    assert text == "after\n" * 3 and secret[-4:] not in text
    assert skipped == stream.stat().st_size - len(text)
