"""Batch logs are masked while they stream to disk (issue 12, item 5).

:class:`faice.secrets.StreamRedactor` gets a log in chunks of any size; a secret split
across chunks at any offset is still masked, the clear text never reaches the sink, and
memory stays bounded however long the log is.
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import pytest

from faice.secrets import MASK, RedactingFile, Redactor, StreamRedactor

SECRET = "s3cr3t-Pa55w0rd-xyz"


def _stream(redactor: Redactor, chunks: list[bytes]) -> tuple[bytes, list[bytes]]:
    written: list[bytes] = []
    stream = StreamRedactor(redactor, written.append)
    for chunk in chunks:
        stream.write(chunk)
    stream.close()
    return b"".join(written), written


def test_secret_split_at_every_offset_across_two_chunks() -> None:
    redactor = Redactor([SECRET])
    text = f"before {SECRET} middle {SECRET}after\n".encode()
    expected = redactor.redact(text.decode()).encode()
    assert SECRET.encode() not in expected
    for cut in range(len(text) + 1):
        out, pieces = _stream(redactor, [text[:cut], text[cut:]])
        assert out == expected, cut
        assert all(SECRET.encode() not in piece for piece in pieces)


def test_secret_split_over_many_tiny_chunks() -> None:
    redactor = Redactor([SECRET, "short"])
    text = f"a{SECRET}b short c{SECRET[:-1]} not whole {SECRET}".encode()
    expected = redactor.redact(text.decode()).encode()
    for size in (1, 2, 3, 5, 7, len(SECRET) - 1, len(SECRET), len(SECRET) + 1):
        chunks = [text[i:i + size] for i in range(0, len(text), size)]
        out, _ = _stream(redactor, chunks)
        assert out == expected, size
    assert SECRET[:-1].encode() in expected  # a prefix alone is not a secret


def test_random_chunkings_match_whole_text_redaction() -> None:
    rng = random.Random(12)
    secrets = ["alpha-secret", "beta", "alpha", "gamma-gamma-gamma", "ü-ünicode-secret"]
    redactor = Redactor(secrets)
    for _ in range(200):
        words = [rng.choice(secrets + ["x", "y ", "\n", "alph", "gam"]) for _ in range(40)]
        text = "".join(words).encode()
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(8, len(text))))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        out, _ = _stream(redactor, chunks)
        assert out == redactor.redact(text.decode()).encode()


def test_parent_secrets_and_json_escaped_forms_are_masked() -> None:
    parent = Redactor(['pa"rent'])
    redactor = Redactor([SECRET], parent=parent)
    text = b'{"x": "pa\\"rent"} ' + SECRET.encode()
    out, _ = _stream(redactor, [text[:9], text[9:]])
    assert out == f'{{"x": "{MASK}"}} {MASK}'.encode()


def test_without_secrets_bytes_pass_unchanged_and_at_once() -> None:
    out, pieces = _stream(Redactor(), [b"\xff\xfe raw", b" bytes"])
    assert out == b"\xff\xfe raw bytes" and pieces == [b"\xff\xfe raw", b" bytes"]


def test_only_the_possible_start_of_a_secret_is_held_back() -> None:
    """`faice logs -f` sees the log as it grows: all but len(secret)-1 bytes are written."""
    written: list[bytes] = []
    stream = StreamRedactor(Redactor([SECRET]), written.append)
    stream.write(b"x" * 1000)
    assert len(b"".join(written)) == 1000 - (len(SECRET) - 1)
    stream.close()
    assert b"".join(written) == b"x" * 1000


def test_redacting_file_never_holds_the_clear_text(tmp_path) -> None:
    target = tmp_path / "stdout.txt"
    with RedactingFile(target, Redactor([SECRET])) as out:
        for piece in (SECRET[:5], SECRET[5:], "\n"):
            out.write(piece.encode())
            out.flush()
            assert SECRET[:6].encode() not in target.read_bytes()
    assert target.read_bytes() == f"{MASK}\n".encode()


HARNESS = textwrap.dedent("""
    import resource, sys
    from faice.secrets import RedactingFile, Redactor
    secret = "hunter2-" + "z" * 24
    redactor = Redactor([secret, *("other-secret-%d" % i for i in range(200))])
    line = (b"progress 0123456789 " * 3 + secret.encode() + b" step ok\\n")
    chunk = line * (65536 // len(line))
    total = 0
    with RedactingFile(sys.argv[1], redactor) as out:
        while total < 99 * 2**20:
            out.write(chunk)
            total += len(chunk)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


@pytest.mark.slow
def test_99_mib_log_is_redacted_in_bounded_memory(tmp_path) -> None:
    """Before: the whole log was read back into memory (a 99 MiB log took 311 MiB)."""
    target = tmp_path / "big.log"
    baseline = subprocess.run([sys.executable, "-c", "import resource, faice.secrets; "
                               "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
                              capture_output=True, text=True, check=True)
    done = subprocess.run([sys.executable, "-c", HARNESS, str(target)], capture_output=True, text=True,
                          check=True, timeout=300)
    peak_kib, base_kib = int(done.stdout.split()[-1]), int(baseline.stdout.split()[-1])
    size = target.stat().st_size
    print(f"99 MiB log: peak RSS {peak_kib / 1024:.1f} MiB (interpreter alone {base_kib / 1024:.1f} MiB), "
          f"file {size / 2**20:.1f} MiB")
    assert size > 60 * 2**20  # 99 MiB in; every secret (32 bytes) became ******** (8)
    with open(target, "rb") as handle:
        while block := handle.read(2**20):
            assert b"hunter2" not in block
    assert peak_kib - base_kib < 20 * 1024, (peak_kib, base_kib)


@pytest.mark.docker
def test_batch_log_never_holds_the_secret_at_any_moment(tmp_path, test_image):
    """The container prints a secret 100,000 times; stdout.txt is read over and over while
    faice writes it. Before, the clear log was written first and then rewritten masked."""
    import os
    import threading

    from engine_helpers import sh_red

    from faice.pipeline.options import RunOptions
    from faice.pipeline.run import run_experiment
    from faice.red.prepare import load_experiment
    from faice.secrets import REDACTOR

    secret = "Stream-" + os.urandom(8).hex()
    REDACTOR.add(secret)  # what filling a {{variable}} does
    red = sh_red(tmp_path / "r.json", f'i=0; while [ $i -lt 100000 ]; do echo "step $i {secret}"; i=$((i+1)); done',
                 test_image)
    outdir = tmp_path / "run"
    seen: list[str] = []
    reads = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for path in outdir.glob("batches/*/std*.txt"):
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                reads[0] += 1
                if secret.encode() in data:
                    seen.append(f"{path.name} after {reads[0]} reads, {len(data)} bytes")

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        summary = run_experiment(load_experiment(str(red)), RunOptions(), outdir)
    finally:
        done.set()
        watcher.join(10)
    assert summary.state == "succeeded"
    assert reads[0] > 0 and not seen, seen
    stdout = next(outdir.glob("batches/*/stdout.txt")).read_bytes()
    assert stdout.count(b"********") == 100000 and secret.encode() not in stdout
