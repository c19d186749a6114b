"""The local engine (``ccfaice``/``local``): the batch pipeline on this host, with a display.

The work is :class:`faice.pipeline.run.HostRun`'s; this module decides the run directory,
says what ``--dry-run`` shows (:func:`plan`; :func:`faice.engines.base.dry_run` prints it),
shows the live progress, routes Ctrl-C/SIGTERM to the run and turns its summary into the
exit code (0, 1, 130 or 143).
"""

from __future__ import annotations

import sys
from typing import Any

from faice.engines.base import Engine
from faice.engines.display import ProgressDisplay, plan_text, results_table, summary_table
from faice.errors import FaiceError
from faice.files import dumps_json
from faice.pipeline.options import ExecRequest
from faice.pipeline.records import new_run_id
from faice.pipeline.run import HostRun, interrupted_exit
from faice.pipeline.rundir import RunDir, default_outdir
from faice.pipeline.signals import interrupts_to
from faice.red.experiment import Experiment
from faice.secrets import REDACTOR


def plan(experiment: Experiment, request: ExecRequest) -> dict[str, Any]:
    """What a run would do: batches, commands, image, GPU placement, mounts (nothing runs)."""
    run_id = new_run_id()
    outdir = request.outdir or default_outdir(run_id)
    return HostRun(experiment, request.options, outdir, run_id=run_id).plan()


def run(experiment: Experiment, request: ExecRequest) -> int:
    options = request.options
    rundir, run_id = RunDir.start(request.outdir, resume=options.resume)
    display = ProgressDisplay(len(experiment.batches), live=None if request.progress else False)
    host_run = HostRun(experiment, options, rundir.root, run_id=run_id,
                       on_event=display, on_note=display.note)
    with interrupts_to(host_run.on_signal), display:
        host_run.start()
        try:
            while (summary := host_run.wait(0.2)) is None:
                pass
        except FaiceError:
            code = interrupted_exit(host_run)
            if code is not None:  # interrupted: the error is the interruption's consequence
                return code
            raise
    if request.json:
        sys.stdout.write(REDACTOR.redact(dumps_json(summary.to_dict(), indent=2)) + "\n")
        sys.stdout.flush()
    summary_table(summary.to_dict())
    if not request.json and any(e.get("metrics") for e in summary.to_dict().get("batches") or []):
        results_table(rundir.root)
    code = interrupted_exit(host_run)
    return code if code is not None else summary.exit_code


ENGINE = Engine("ccfaice", frozenset({
    "outdir", "dry_run", "wait", "resume", "parallel", "fail_fast", "max_failures", "retries", "timeout",
    "gpu_ids", "pull", "disable_pull", "leave_container", "preserve_environment", "runtime",
}), run, plan, plan_text)
