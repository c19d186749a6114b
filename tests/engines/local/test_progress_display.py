"""What ``faice exec`` shows while batches run: on a real pseudo-terminal and through pipes.

The terminal test reads the screen the way a terminal draws it: :class:`Screen` replays the
bytes faice wrote to the pty (the few escape sequences rich's live display uses: erase line,
cursor up, hide/show cursor, colours) and fails on any other, so a change in how the display
is drawn is noticed rather than passing by accident.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
from engine_helpers import faice_containers, read, sh_red

pytestmark = pytest.mark.docker

CSI = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])")
ANSI = re.compile(r"\x1b[\[\]()]")
SWEEP = {"grid": {"n": [1, 2, 3]}}  # three batches of `sleep 1`; the third exits with code 1
SCRIPT = 'sleep 1; [ "$0" -lt 3 ]'


class Screen:
    """A minimal terminal: lines of text, a cursor, and the escape sequences rich's Live uses."""

    def __init__(self) -> None:
        self.lines: list[str] = [""]
        self.row = 0
        self.col = 0
        self.cursor_visible = True

    def feed(self, text: str) -> None:
        index = 0
        while index < len(text):
            char = text[index]
            if char == "\x1b":
                match = CSI.match(text, index)
                assert match, f"unexpected escape sequence {text[index:index + 12]!r}"
                self._csi(match.group(1), match.group(2))
                index = match.end()
                continue
            if char == "\r":
                self.col = 0
            elif char == "\n":
                self.row += 1
                while len(self.lines) <= self.row:
                    self.lines.append("")
            else:
                line = self.lines[self.row].ljust(self.col)
                self.lines[self.row] = line[:self.col] + char + line[self.col + 1:]
                self.col += 1
            index += 1

    def _csi(self, params: str, command: str) -> None:
        if command == "K":  # erase line: 2 = whole line, 0/empty = to its end
            self.lines[self.row] = "" if params == "2" else self.lines[self.row][:self.col]
        elif command == "A":
            self.row = max(0, self.row - int(params or 1))
        elif command in "hl" and params == "?25":
            self.cursor_visible = command == "h"
        elif command == "m":
            pass  # colours and styles do not change the text
        else:
            raise AssertionError(f"unexpected escape sequence ESC[{params}{command}")

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.lines).strip("\n")


def frames(raw: str) -> tuple[list[str], Screen]:
    """Every screen the user saw (taken just before the live display erases itself), and the last."""
    screen = Screen()
    seen = []
    for part in re.split(r"(?=\r\x1b\[2K)", raw):
        screen.feed(part)
        seen.append(screen.text())
    return seen, screen


def spawn_faice(*args: str, cwd: Path) -> pexpect.spawn:
    env = dict(os.environ, TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    return pexpect.spawn(sys.executable, ["-m", "faice", *args], cwd=str(cwd), env=env, dimensions=(50, 140),
                         timeout=120, encoding="utf-8", codec_errors="replace")


def finish(child: pexpect.spawn) -> str:
    child.expect(pexpect.EOF)
    child.close()
    return child.before


@pytest.fixture
def sweep_red(tmp_path, test_image) -> Path:
    return sh_red(tmp_path / "r.json", SCRIPT, test_image, sweep=SWEEP)


def batch_ids(outdir: Path) -> list[str]:
    return [entry["id"] for entry in read(outdir / "run.json")["batches"]]


def test_live_display_on_a_terminal_shows_counts_phases_and_the_summary(tmp_path, sweep_red, docker_client):
    child = spawn_faice("exec", str(sweep_red), "--outdir", "run", "--parallel", "3", cwd=tmp_path)
    raw = finish(child)
    assert child.exitstatus == 1, raw
    ids = batch_ids(tmp_path / "run")
    seen, screen = frames(raw)

    # While all three ran: the counts per state, and one row per batch with its phase and clock.
    running = [f for f in seen if re.search(r"^running 3  \(\d+s\)$", f, re.M)]
    assert running, "no screen showed three batches running:\n" + "\n---\n".join(seen[-5:])
    for position, batch_id in enumerate(ids, start=1):
        assert re.search(rf"^  batch {position}/3 {batch_id} \(n=\d\)  (run|collect) \d+s$", running[-1], re.M), running[-1]
    assert any(re.search(r"^  batch \d/3 \S+ \(n=\d\)  run [1-9]\d*s$", f, re.M) for f in seen), "the phase clock never moved"
    # Counts move as batches end, one state per count.
    assert any(re.search(r"^running 2  succeeded 1  \(\d+s\)$|^running 2  failed 1  \(\d+s\)$", f, re.M) for f in seen)

    # At the end the live display is gone (it is transient), the cursor is back, and what
    # stays is one line per batch state change and the summary table.
    final = screen.text()
    assert screen.cursor_visible
    assert not re.search(r"^(pending|running|succeeded) \d", final, re.M), final
    for position, batch_id in enumerate(ids[:2], start=1):
        assert f"batch {position}/3 {batch_id} (n={position}) running" in final
        assert re.search(rf"^batch {position}/3 {batch_id} \(n={position}\) succeeded in \d+\.\ds$", final, re.M), final
    assert re.search(rf"^batch 3/3 {ids[2]} \(n=3\) failed in \d+\.\ds \[exit-code\]: the command exited with code 1$",
                     final, re.M), final
    assert re.search(rf"^\s+2  {ids[2]}\s+failed\s+\d+\.\d  exit-code$", final, re.M), final
    run_id = read(tmp_path / "run" / "run.json")["runId"]
    assert final.endswith(f"faice: run {run_id} failed: 2 succeeded, 1 failed; records in run"), final
    assert faice_containers(docker_client, run_id) == []


def test_without_a_terminal_progress_is_plain_lines_on_stderr_and_stdout_is_only_json(tmp_path, sweep_red):
    done = subprocess.run([sys.executable, "-m", "faice", "exec", str(sweep_red), "--outdir", "run", "--json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)  # nothing else on stdout
    assert summary["counts"] == {"failed": 1, "succeeded": 2}
    ids = [entry["id"] for entry in summary["batches"]]
    assert not ANSI.search(done.stderr), done.stderr
    lines = done.stderr.splitlines()
    for position, batch_id in enumerate(ids, start=1):
        assert f"batch {position}/3 {batch_id} (n={position}) running" in lines
    assert sum(bool(re.fullmatch(r"batch [12]/3 \S+ \(n=[12]\) succeeded in \d+\.\ds", line)) for line in lines) == 2
    assert f"batch 3/3 {ids[2]} (n=3) failed in" in done.stderr and "[exit-code]" in done.stderr
    assert lines[-1].startswith(f"faice: run {summary['runId']} ")
    # Without --json, stdout stays empty: everything for people goes to stderr.
    again = subprocess.run([sys.executable, "-m", "faice", "exec", str(sweep_red), "--outdir", "run2"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and again.stdout == "", again.stdout
    assert f"faice: run {read(tmp_path / 'run2' / 'run.json')['runId']} " in again.stderr


def test_no_progress_on_a_terminal_draws_no_live_display(tmp_path, sweep_red):
    child = spawn_faice("exec", str(sweep_red), "--outdir", "run", "--no-progress", cwd=tmp_path)
    raw = finish(child)
    assert child.exitstatus == 1, raw
    assert not ANSI.search(raw), repr(raw[:500])
    text = raw.replace("\r\n", "\n")
    assert not re.search(r"^(pending|running) \d", text, re.M), text
    ids = batch_ids(tmp_path / "run")
    for position, batch_id in enumerate(ids, start=1):
        assert f"batch {position}/3 {batch_id} (n={position}) running\n" in text
    assert f"faice: run {read(tmp_path / 'run' / 'run.json')['runId']} " in text


def test_ctrl_c_on_a_terminal_restores_the_screen(tmp_path, test_image, docker_client):
    red = sh_red(tmp_path / "r.json", "sleep 60", test_image, sweep={"grid": {"n": [1, 2]}})
    child = spawn_faice("exec", str(red), "--outdir", "run", cwd=tmp_path)
    child.expect(r"running 2  \(\d+s\)", timeout=60)
    child.sendintr()
    raw = child.before + child.after + finish(child)
    assert child.exitstatus == 130, raw
    _, screen = frames(raw)
    final = screen.text()
    assert screen.cursor_visible
    assert not re.search(r"^(pending|running) \d", final, re.M), final
    assert "stopping: no new batches" in final
    assert re.search(r"^batch [12]/2 \S+ \(n=\d\) cancelled", final, re.M), final
    run_id = read(tmp_path / "run" / "run.json")["runId"]
    assert faice_containers(docker_client, run_id) == []


def test_a_large_sweep_keeps_the_counts_on_screen():
    """Hundreds of running batches: the first rows, then one line for the rest (no scrolling away)."""
    import io

    from rich.console import Console

    from faice.engines.display import MAX_RUNNING_ROWS, ProgressDisplay
    from faice.pipeline.events import BatchEvent

    display = ProgressDisplay(300, stream=io.StringIO(), live=False)
    for index in range(MAX_RUNNING_ROWS + 5):
        display(BatchEvent(f"b-{index:04d}", index, "running", "stage-in"))
    display(BatchEvent("b-0299", 299, "failed", failure_class="exit-code", seconds=1.0))
    out = io.StringIO()
    Console(file=out, width=120).print(display._render())
    lines = out.getvalue().splitlines()
    assert re.fullmatch(r"pending 274  running 25  failed 1  \(\d+s\)", lines[0].strip()), lines[0]
    assert re.fullmatch(r"batch +1/300 b-0000  stage-in \d+s", lines[1].strip()), lines[1]
    assert len(lines) == 1 + MAX_RUNNING_ROWS + 1
    assert lines[-1].strip() == "… and 5 more running"
