"""What the user sees on stderr while a run goes on.

On a terminal: a rich live display with counts per state and the phase of every running
batch. Otherwise (logs, CI, ``--no-progress``): one plain line per batch state change. Rich
honours ``NO_COLOR``; everything printed passes through the redactor.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, TextIO

from faice.pipeline.events import BatchEvent
from faice.secrets import REDACTOR
from faice.untrusted import for_terminal

REFRESH_PER_SECOND = 4
MAX_RUNNING_ROWS = 20  # a sweep of hundreds must not push the counts off the screen

STATES = ("pending", "waiting", "running", "succeeded", "failed", "cancelled", "stopped", "skipped")
FINAL_SHOWN = ("running", "succeeded", "failed", "cancelled", "stopped", "skipped")
LOG_CHARS = 60  # the last log line shown per running batch


class ProgressDisplay:
    """Turns :class:`BatchEvent` s into a live display or plain lines; thread-safe."""

    def __init__(self, total: int, *, stream: TextIO | None = None, live: bool | None = None):
        self.total = total
        self.stream = stream or sys.stderr
        isatty = getattr(self.stream, "isatty", lambda: False)()
        self.live_mode = isatty and os.environ.get("TERM") != "dumb" if live is None else live
        self._lock = threading.Lock()
        # Every write to the terminal holds this lock: rich's Live erases its last frame by the
        # height it remembers, so a refresh racing a print from another batch's thread leaves
        # stale lines on the screen. An RLock, because a signal handler may print mid-draw.
        self._draw = threading.RLock()
        self._state: dict[str, BatchEvent] = {}
        self._phase_since: dict[str, tuple[tuple[str, str | None], float]] = {}  # id -> ((state, phase), since)
        self._news: dict[str, BatchEvent] = {}  # batch id -> last event with a metric or log line
        self._live: Any = None
        self._console: Any = None
        self._ticker: threading.Thread | None = None
        self._closing = threading.Event()
        self._started = time.monotonic()

    def __enter__(self) -> ProgressDisplay:
        if self.live_mode:
            try:
                from rich.console import Console
                from rich.live import Live

                self._console = Console(file=self.stream)
                # get_renderable: every refresh renders anew, so the clocks move between events.
                # Our own ticker instead of rich's auto refresh, so refreshes take the draw lock.
                self._live = Live(console=self._console, get_renderable=self._render, auto_refresh=False,
                                  transient=True)
                with self._draw:
                    self._live.start(refresh=True)
            except Exception:
                self._live = None
                self.live_mode = False
            else:
                self._ticker = threading.Thread(target=self._tick, name="faice-progress", daemon=True)
                self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        with self._draw:
            if self._live is not None:
                self._live.stop()
                self._live = None

    def _tick(self) -> None:
        while not self._closing.wait(1 / REFRESH_PER_SECOND):
            self._refresh()

    def _refresh(self) -> None:
        with self._draw:
            if self._live is not None:
                self._live.refresh()

    def note(self, text: str) -> None:
        """A line that is not about one batch (image pull, cleanup of leftovers)."""
        self._print(f"faice: {text}")

    def __call__(self, event: BatchEvent) -> None:
        with self._lock:
            previous = self._state.get(event.batch_id)
            if previous is not None and event.parameters is None:
                event.parameters = previous.parameters
            self._state[event.batch_id] = event
            since = self._phase_since.get(event.batch_id)
            if since is None or since[0] != (event.state, event.phase):
                self._phase_since[event.batch_id] = ((event.state, event.phase), event.time)
            if event.metric is not None or event.log is not None:
                old = self._news.get(event.batch_id)
                if old is not None:
                    event.metric = event.metric or old.metric
                    event.log = event.log or old.log
                self._news[event.batch_id] = event
        changed = previous is None or previous.state != event.state
        with self._draw:
            if changed and event.state in FINAL_SHOWN:
                self._print(self._line(event))
            self._refresh()  # the counts change now, not at the next tick

    def _line(self, event: BatchEvent) -> str:
        width = len(str(self.total))
        text = f"batch {event.index + 1:>{width}}/{self.total} {event.batch_id}{_parameters(event)} {event.state}"
        if event.seconds is not None and event.state != "running":
            text += f" in {event.seconds:.1f}s"
        if event.failure_class:
            text += f" [{event.failure_class}]"
        if event.message and event.state in ("failed", "cancelled"):
            text += f": {event.message.splitlines()[0]}"
        return for_terminal(REDACTOR.redact(text))

    def _print(self, text: str) -> None:
        text = for_terminal(REDACTOR.redact(text), lines=True)
        with self._draw:
            if self._live is not None:
                self._live.console.print(text, markup=False, highlight=False)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()

    def counts(self) -> dict[str, int]:
        with self._lock:
            counts = dict.fromkeys(STATES, 0)
            for event in self._state.values():
                counts[event.state] = counts.get(event.state, 0) + 1
            counts["pending"] += self.total - len(self._state)
            return counts

    def _render(self):
        from rich.table import Table

        counts = self.counts()
        table = Table.grid(padding=(0, 2))
        elapsed = time.monotonic() - self._started
        head = "  ".join(f"{k} {v}" for k, v in counts.items() if v) + f"  ({elapsed:.0f}s)"
        table.add_row(REDACTOR.redact(head))
        with self._lock:
            running = sorted((e for e in self._state.values() if e.state == "running"), key=lambda e: e.index)
        width = len(str(self.total))
        now = time.time()
        for event in running[:MAX_RUNNING_ROWS]:
            with self._lock:
                since = self._phase_since.get(event.batch_id, (None, event.time))[1]
                news = self._news.get(event.batch_id)
            phase = f"{event.phase or 'starting'} {max(0.0, now - since):.0f}s"
            row = f"  batch {event.index + 1:>{width}}/{self.total} {event.batch_id}{_parameters(event)}  {phase}"
            if news is not None and news.metric and news.metric.get("value") is not None:
                metric = news.metric
                step = f" @{metric['step']}" if metric.get("step") is not None else ""
                row += f"  {metric.get('name')}={_number(metric['value'])}{step}"
            if news is not None and news.log:
                row += f"  | {news.log.strip()[-LOG_CHARS:]}"
            table.add_row(for_terminal(REDACTOR.redact(row)))
        if len(running) > MAX_RUNNING_ROWS:
            table.add_row(f"  … and {len(running) - MAX_RUNNING_ROWS} more running")
        return table


def _parameters(event: BatchEvent) -> str:
    """`` (lr=0.1, batch=32)`` for a sweep batch, nothing otherwise."""
    if not event.parameters:
        return ""
    return " (" + ", ".join(f"{k}={_number(v)}" for k, v in event.parameters.items()) + ")"


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary_table(summary: dict[str, Any], stream: TextIO | None = None) -> None:
    """The final table: one line per batch, then the totals and where the records are."""
    stream = stream or sys.stderr
    batches = summary.get("batches") or []
    lines = []
    if len(batches) > 1:
        lines.append(f"{'#':>4}  {'batch':<16} {'state':<10} {'seconds':>8}  failure")
        for entry in batches:
            seconds = entry.get("seconds")
            lines.append(
                f"{(entry.get('index') or 0):>4}  {entry.get('id') or '':<16} {entry.get('state') or '':<10} "
                f"{(f'{seconds:.1f}' if isinstance(seconds, (int, float)) else '-'):>8}  "
                f"{entry.get('failureClass') or ''}"
            )
    counts = summary.get("counts") or {}
    totals = ", ".join(f"{v} {k}" for k, v in counts.items())
    lines.extend(failure_report(summary))
    lines.append(f"faice: run {summary.get('runId')} {summary.get('state')}: {totals}; records in {summary.get('outdir')}")
    stream.write(for_terminal(REDACTOR.redact("\n".join(lines)), lines=True) + "\n")
    stream.flush()


def failure_report(summary: dict[str, Any], outdir: Any = None, *, tail: int = 5, most: int = 10) -> list[str]:
    """Each failed batch's reason and the last lines of its stderr (the first ``most`` batches)."""
    from faice.pipeline.rundir import RunDir, is_batch_id

    rundir = RunDir(outdir or summary.get("outdir") or ".")
    root = rundir.root
    failed = [e for e in summary.get("batches") or [] if e.get("state") == "failed"]
    lines: list[str] = []
    for entry in failed[:most]:
        parameters = entry.get("parameters") or {}
        shown = " (" + ", ".join(f"{k}={_number(v)}" for k, v in parameters.items()) + ")" if parameters else ""
        lines.append(for_terminal(f"failed: batch {entry.get('index')} {entry.get('id')}{shown} "
                                  f"[{entry.get('failureClass')}]: {entry.get('message') or ''}", lines=True))
        batch_id = str(entry.get("id"))
        text = rundir.stderr_tail(batch_id) if is_batch_id(batch_id) else ""
        last = [line for line in text.splitlines() if line.strip()][-tail:]
        if last and last[0] != (entry.get("message") or ""):
            lines.append("  stderr: " + "\n  stderr: ".join(for_terminal(line) for line in last))
    if len(failed) > most:
        lines.append(f"failed: … and {len(failed) - most} more (faice status --outdir {root})")
    return lines


def results_table(outdir: Any, stream: TextIO | None = None) -> None:
    """``faice results OUTDIR``'s table and winner line, after a run with metrics."""
    from faice.pipeline.results import load_results, render

    stream = stream or sys.stdout
    stream.write(REDACTOR.redact(render(load_results(outdir), "table", top=20)))
    stream.flush()


def plan_text(plan: dict[str, Any]) -> str:
    """``--dry-run``'s text: the batches, their commands, GPUs and mounts."""
    import shlex

    lines = [
        f"image: {plan['image']}" + (f"   ram: {plan['ram']} MB" if plan["ram"] else ""),
        f"batches: {len(plan['batches'])}   parallel: {plan['parallel']}   "
        f"GPUs per batch: {plan['gpusPerBatch']}   outdir: {plan['outdir']}",
    ]
    lines.append(f"runtime: {plan.get('runtime') or 'docker'}")
    if plan.get("ramNote"):
        lines.append(f"RAM: {plan['ramNote']}")
    if plan.get("gpuNote"):
        lines.append(f"GPUs: {plan['gpuNote']}")
    search = plan.get("search")
    if search:
        lines.append(f"search: {search['algorithm']}, {search['trials']} trials proposed while the run goes "
                     f"(seed {search['seed']}): " + ", ".join(
                         f"{name} {kind} {arguments}" for name, spec in search["parameters"].items()
                         for kind, arguments in spec.items()))
    for gpu in plan.get("gpuDevices") or []:
        shared = bool((plan.get("gpuRequest") or {}).get("shared"))
        state = "busy (processes faice did not start): skipped" if gpu["busy"] else (
            (f"{gpu['reserved']}/{gpu['vram']} MiB reserved by " if shared else "whole device for ")
            + (", ".join(gpu["batches"]) or "no batch"))
        lines.append(f"GPU {gpu['index']} {gpu['name'] or gpu['uuid']}: {state}")
    for batch in plan["batches"]:
        lines.append(f"\n[{batch['index']}] {batch['id']}")
        if batch["parameters"]:
            lines.append("  parameters: " + ", ".join(f"{k}={v}" for k, v in batch["parameters"].items()))
        lines.append("  command:    " + shlex.join(batch["command"]))
        if batch.get("runtimeCommand"):
            lines.append("  runtime:    " + shlex.join(batch["runtimeCommand"]))
        if batch.get("runtimeEnvironment"):
            lines.append("  env:        " + " ".join(f"{k}={v}" for k, v in sorted(batch["runtimeEnvironment"].items())))
        if batch["gpus"]:
            lines.append("  gpus:       " + ",".join(batch["gpus"]))
        for mount in batch["mounts"]:
            source = mount.get("source") or f"{mount['connector']} connector" + (" (host mount)" if mount["hostMount"] else "")
            lines.append(f"  mount:      {mount['target']} ({mount['mode']}) <- {source}")
        for key, where in (batch.get("outputs") or {}).items():
            lines.append(f"  output:     {key} -> {where}")
    return "\n".join(lines)
