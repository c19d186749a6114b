"""Seeded fuzz of the example RED files through ``faice validate`` and ``faice exec --dry-run``.

Run: .venv/bin/python bench/fuzz_red.py [COUNT=1000] [--seed 19]

Each of COUNT mutations (byte flips, YAML tokens, lines deleted, duplicated or re-indented,
deep nesting, alias bombs, truncation, and large lists: 100,000 items in the sweep, an input,
an access mapping or the tool's baseCommand) of a file from tests/data/red/valid and
examples/ runs through both commands in this process. Counted: tracebacks (an exception out
of ``main`` or a "Traceback" on stderr), internal errors, exit codes other than 0/1/2, and
calls over 10 s of CPU. The issue's bar: 0, 0, 0 and 0. tests/security/test_fuzz_red.py runs
a small slice of the same mutations in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU_LIMIT_S = 10.0
WALL_LIMIT_S = 120
TOKENS = [b"[", b"]", b"{", b"}", b'"', b"'", b": ", b"- ", b"&a ", b"*a", b"!!float ", b"!!binary ", b"!tag ",
          b"<<: *a", b"{{x}}", b"$(sweep.x)", b"$(inputs.x)", b"\t", b'"\\ud800"', b"9" * 5000, b"---\n", b"\x00",
          b"\xff", b"~", b"null", b"1e999", b".nan", b"? [a]\n: x\n", b"2020-13-45", b"\x1b]0;x\x07"]
KINDS = ("flip", "token", "delete-line", "duplicate-line", "indent", "nest", "bomb", "truncate", "big-list",
         "big-token-list")


def corpus() -> list[tuple[str, bytes]]:
    paths = sorted((ROOT / "tests" / "data" / "red" / "valid").iterdir()) + sorted((ROOT / "examples").glob("**/*.red.yml"))
    return [(p.name, p.read_bytes()) for p in paths if p.is_file()]


def bomb() -> bytes:
    lines = [b'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for previous, name in zip(b"abcdefgh", b"bcdefghi", strict=True):
        lines.append(b"%c: &%c [%s]" % (name, name, b", ".join([b"*%c" % previous] * 9)))
    return b"\n".join(lines) + b"\n"


def big_list(rng: random.Random) -> bytes:
    items = rng.choice([100_000, 20_000, 10_001, 600])
    item = rng.choice([b"1", b'"x"', b"0.5", b"{a: 1}"])
    return b"[" + b", ".join([item] * items) + b"]"


def mutate(rng: random.Random, text: bytes) -> bytes:
    data = bytearray(text)
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(KINDS)
        position = rng.randint(0, max(0, len(data) - 1))
        lines = bytes(data).split(b"\n")
        line = rng.randint(0, len(lines) - 1)
        if kind == "flip" and data:
            data[position] = rng.randint(0, 255)
        elif kind == "token":
            data[position:position] = rng.choice(TOKENS)
        elif kind == "delete-line":
            del lines[line]
            data = bytearray(b"\n".join(lines))
        elif kind == "duplicate-line":
            lines.insert(line, lines[line])
            data = bytearray(b"\n".join(lines))
        elif kind == "indent":
            lines[line] = b" " * rng.randint(1, 6) + lines[line]
            data = bytearray(b"\n".join(lines))
        elif kind == "nest":
            depth = rng.choice([50, 99, 101, 1000, 3000])
            data[position:position] = b"[" * depth + b"]" * depth
        elif kind == "bomb":
            data[0:0] = bomb()
        elif kind == "truncate":
            del data[position:]
        elif kind in ("big-list", "big-token-list"):
            # a value of some key replaced by a large flow list (baseCommand for the token list)
            keys = [i for i, text_line in enumerate(lines) if b": " in text_line and not text_line.lstrip().startswith(b"#")]
            wanted = [i for i in keys if b"baseCommand" in lines[i]] if kind == "big-token-list" else keys
            if wanted:
                index = rng.choice(wanted)
                head = lines[index].split(b": ", 1)[0]
                lines[index] = head + b": " + big_list(rng)
                data = bytearray(b"\n".join(lines))
    return bytes(data)


@dataclass
class Report:
    files: int = 0
    calls: int = 0
    tracebacks: list[str] = field(default_factory=list)
    internal_errors: list[str] = field(default_factory=list)
    odd_exit_codes: list[str] = field(default_factory=list)
    over_cpu: list[str] = field(default_factory=list)
    exit_codes: dict[int, int] = field(default_factory=dict)
    max_cpu_s: float = 0.0
    total_cpu_s: float = 0.0

    def ok(self) -> bool:
        return not (self.tracebacks or self.internal_errors or self.odd_exit_codes or self.over_cpu)


class _Hang(BaseException):  # not an Exception: faice's own error handler must not catch it
    pass


def _alarm(signum, frame):
    raise _Hang()


def run_cli(argv: list[str]) -> tuple[int, str, float]:
    """(exit code, stderr, CPU seconds) of ``faice ARGV`` in this process."""
    from faice.cli import main
    from faice.secrets import REDACTOR

    REDACTOR.clear()
    err, out = io.StringIO(), io.StringIO()
    started = time.process_time()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(WALL_LIMIT_S)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 2
            except _Hang:
                code = -1
                err.write(f"(no end within {WALL_LIMIT_S} s)")
            except Exception as exc:  # an exception out of main is a traceback for a user
                code = -2
                err.write(f"Traceback (raised out of main): {type(exc).__name__}: {exc}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, err.getvalue(), time.process_time() - started


def fuzz(count: int, seed: int = 19, workdir: Path | None = None) -> Report:
    rng = random.Random(seed)
    files = corpus()
    report = Report()
    with tempfile.TemporaryDirectory(prefix="faice-fuzz-", dir=workdir) as tmp:
        for number in range(count):
            name, text = rng.choice(files)
            content = mutate(rng, text)
            path = Path(tmp) / f"m{number}-{name}"
            path.write_bytes(content)
            report.files += 1
            for argv in (["validate", str(path)], ["exec", "--dry-run", "--outdir", str(Path(tmp) / "out"), str(path)]):
                code, err, cpu = run_cli(argv)
                report.calls += 1
                report.exit_codes[code] = report.exit_codes.get(code, 0) + 1
                report.total_cpu_s += cpu
                report.max_cpu_s = max(report.max_cpu_s, cpu)
                where = f"#{number} {name} faice {argv[0]}: {err.strip()[-300:]!r}"
                if "Traceback" in err:
                    report.tracebacks.append(where)
                if "internal error" in err:
                    report.internal_errors.append(where)
                if code not in (0, 1, 2):
                    report.odd_exit_codes.append(where)
                if cpu > CPU_LIMIT_S:
                    report.over_cpu.append(f"{where} ({cpu:.1f} s CPU)")
            path.unlink()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, nargs="?", default=1000)
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args()
    started = time.monotonic()
    report = fuzz(args.count, args.seed)
    print(json.dumps({
        "mutations": report.files, "calls": report.calls, "seed": args.seed,
        "tracebacks": len(report.tracebacks), "internalErrors": len(report.internal_errors),
        "oddExitCodes": len(report.odd_exit_codes), f"over{CPU_LIMIT_S:g}sCpu": len(report.over_cpu),
        "maxCpuSeconds": round(report.max_cpu_s, 2), "totalCpuSeconds": round(report.total_cpu_s, 1),
        "wallSeconds": round(time.monotonic() - started, 1),
        "exitCodes": {str(k): v for k, v in sorted(report.exit_codes.items())},
    }, indent=1))
    for title, items in (("tracebacks", report.tracebacks), ("internal errors", report.internal_errors),
                         ("odd exit codes", report.odd_exit_codes), ("over the CPU limit", report.over_cpu)):
        for item in items[:20]:
            print(f"{title}: {item}", file=sys.stderr)
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
