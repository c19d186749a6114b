"""Follow and cancel a local run from another terminal (``faice status --wait`` and ``faice
cancel`` with ``--outdir``).

A local run lives in the ``faice exec`` process that started it; its ``run.json`` names that
process (``owner``). Waiting polls the record until the run is final or that process is gone;
cancelling sends the process SIGTERM, which ends the run as Ctrl-C does (every batch stopped,
containers removed, states ``cancelled``), and waits for it to finish.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from faice.errors import EngineError, UsageError
from faice.pipeline.records import RunState
from faice.pipeline.rundir import RunDir
from faice.runtime.docker import owner_alive

POLL_S = 0.2
CANCEL_WAIT_S = 120.0  # the run's own grace period for its containers, and then some


def _read(outdir: Path) -> dict[str, Any]:
    rundir = RunDir(outdir)
    run = rundir.read_run()
    if run is None:
        raise UsageError(f"{rundir.run_file}: no such file or not a run record; --outdir must be a faice run directory")
    return run


def wait_run(outdir: Path, deadline: float | None = None) -> dict[str, Any]:
    """The run record once the run is final; a run whose faice process died is marked
    ``interrupted`` (as the next ``faice exec`` would). With ``deadline`` (monotonic), the
    record as it is then."""
    run = _read(outdir)
    while run.get("state") == RunState.RUNNING.value:
        owner = str(run.get("owner") or "")
        if owner and not owner_alive(owner):
            RunDir(outdir).mark_interrupted(owner)
            return _read(outdir)
        if deadline is not None and time.monotonic() > deadline:
            return run
        time.sleep(POLL_S)
        run = _read(outdir)
    return run


def cancel_run(outdir: Path, target: str | None) -> dict[str, Any] | None:
    """Cancel the local run in ``outdir`` as a whole (``target`` is its run id or ``all``);
    returns its final record, or None when it was not running."""
    run = _read(outdir)
    if target not in (None, "all", run.get("runId")):
        raise UsageError(f"{outdir} is a local run: it is cancelled as a whole, with its run id "
                         f"(faice cancel {run.get('runId')} --outdir {outdir}), not batch by batch")
    owner = str(run.get("owner") or "")
    if run.get("state") != RunState.RUNNING.value or not owner or not owner_alive(owner):
        return None
    host, _, rest = owner.partition(":")
    if host != _hostname():
        raise EngineError(f"the run in {outdir} belongs to a faice process on {host}: cancel it there")
    pid_text = rest.partition(":")[0]
    if not pid_text.isdigit() or not _is_faice(int(pid_text)):  # run.json is only a file: never signal a process it names blindly
        raise EngineError(f"the owner of the run in {outdir} ({owner}) is not a faice process: not stopped")
    pid = int(pid_text)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    except PermissionError:
        raise EngineError(f"the run in {outdir} belongs to another user's faice process: not allowed to stop it") from None
    final = wait_run(outdir, deadline=time.monotonic() + CANCEL_WAIT_S)
    if final.get("state") == RunState.RUNNING.value:
        raise EngineError(f"the faice process of the run in {outdir} did not stop within {CANCEL_WAIT_S:.0f} s")
    return final


def _is_faice(pid: int) -> bool:
    """Is ``pid`` running faice (``faice …`` or ``python -m faice …``)?"""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(Path(os.fsdecode(arg)).name == "faice" for arg in argv[:3])


def _hostname() -> str:
    import socket

    return socket.gethostname()
