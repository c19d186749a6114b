"""``faice exec`` with ``engine: slurm``, and ``faice status|cancel --outdir`` of a Slurm run.

Submits one job array (one task per batch), and with ``--wait`` follows it with the local
engine's progress display; Ctrl-C or SIGTERM cancels the array (nothing is left running
behind the user's back) and exits 130 or 143 like a local run.
"""

from __future__ import annotations

import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from faice.engines.base import Engine
from faice.engines.slurm import client as slurm_cli
from faice.engines.slurm import rundir
from faice.engines.slurm import search as slurm_search
from faice.engines.slurm.job import (
    FINAL,
    SUCCEEDED,
    TASK_MODULE,
    Job,
    cancel_run,
    current_states,
    open_run,
    refresh_run,
    submit_batches,
    wait_run,
    watch,
    write_run_summary,
)
from faice.engines.slurm.packed import WORKER_MODULE, PackedJob
from faice.engines.slurm.settings import SlurmSettings, sbatch_options
from faice.files import dumps_json
from faice.pipeline.options import ExecRequest
from faice.pipeline.resume import ResumePlan, save_red_file
from faice.pipeline.rundir import RunDir
from faice.pipeline.signals import EXIT_SIGNAL, interrupts_to
from faice.red.experiment import Experiment
from faice.red.search import SearchSpec, is_search
from faice.secrets import REDACTOR


def _say(message: str) -> None:
    print(REDACTOR.redact(message), file=sys.stderr, flush=True)


def run(experiment: Experiment, request: ExecRequest) -> int:
    """Submit one array; with ``--wait`` follow it (a search: drive it, :mod:`.search`)."""
    settings = SlurmSettings.from_experiment(experiment)
    searching = is_search(experiment.data)
    slurm_cli.require_tools()
    options = request.options
    if searching:
        from faice.pipeline.search import require_optuna

        require_optuna(SearchSpec.from_sweep(experiment.data["sweep"]).algorithm)  # before a run directory
    root = Path(settings.run_dir).expanduser() if settings.run_dir else None
    run, run_id = RunDir.start(request.outdir, resume=options.resume, root=root)
    outdir = run.root.resolve()
    run = RunDir(outdir)
    if searching:
        return slurm_search.run(experiment, request, settings, run, run_id)
    batches = experiment.batches
    if options.resume:
        resume = ResumePlan.of(run, experiment.data)
        for batch in experiment.batches:
            resume.add(batch.id, batch.parameters, run.read_record(batch.id))
        for line in resume.lines():
            _say(f"faice: {line}")
        done = [b for b in batches if run.kept_on_resume(b.id) is not None]
        # Batches an earlier array still queues or runs are left to it (a second task would
        # run them again into the same directory).
        states = current_states(open_run(outdir)) if rundir.is_slurm_run(outdir) else {}
        live = [b for b in batches if b not in done and b.id in states and states[b.id] not in FINAL]
        batches = [b for b in batches if b not in done and b not in live]
        still = f", {len(live)} still queued or running in an earlier array" if live else ""
        if not batches:
            _say(f"faice: nothing to submit: {len(done)} of {len(experiment.batches)} batches already "
                 f"finished in {outdir}{still}")
            if live and request.wait:
                return 0 if refresh_status(outdir, wait=True).get("state") == SUCCEEDED else 1
            return 0
        _say(f"faice: resuming: {len(done)} batches finished before{still}, re-submitting {len(batches)}")
    save_red_file(run, experiment.data, REDACTOR)
    job = submit_batches(experiment, options, outdir, batches, run_id=run_id, max_running=options.parallel)
    workers = f"{job.workers} workers for " if isinstance(job, PackedJob) else ""
    _say(f"faice: submitted Slurm job array {job.job_id} ({workers}{len(job.batch_ids)} batches); run directory {outdir}")
    if not request.wait:
        if request.json:
            print(dumps_json(run.read_run(), indent=2))
        else:
            _say(f"faice: follow it with: faice status --outdir {shlex.quote(str(outdir))} --wait")
        return 0
    return follow(job, json_output=request.json, live=None if request.progress else False)


def follow(job: Job, *, json_output: bool = False, live: bool | None = None) -> int:
    """Follow the array until every batch is final; the first Ctrl-C or SIGTERM cancels it.
    The handler only records the signal; this loop (between polls) cancels."""
    from faice.engines.slurm.progress import Follower

    received: list[int] = []
    follower = Follower(job.outdir, job.batch_index, live=live)
    cancelled: list[bool] = []

    def cancel_on_signal() -> None:
        if received and not cancelled:
            cancelled.append(True)
            follower.note(f"interrupted: cancelling Slurm job array {job.job_id}")
            job.cancel()

    with follower, interrupts_to(lambda signum, _frame: received.append(signum)):
        states = watch([job], follower.update, before_poll=cancel_on_signal)
    summary = write_run_summary(job.outdir, states=states)
    if json_output:
        print(REDACTOR.redact(dumps_json(summary, indent=2)))
    follower.report(summary)
    if received:
        return EXIT_SIGNAL.get(received[0], EXIT_SIGNAL[signal.SIGINT])
    return 0 if summary["state"] == SUCCEEDED else 1


def plan(experiment: Experiment, request: ExecRequest) -> dict[str, Any]:
    """The sbatch command and each task's batch (``--dry-run``; nothing is submitted)."""
    settings = SlurmSettings.from_experiment(experiment)
    outdir = Path(request.outdir).resolve() if request.outdir else Path("faice-runs/<time>-<run id>")
    spec = SearchSpec.from_sweep(experiment.data["sweep"]) if is_search(experiment.data) else None
    count = spec.trials if spec is not None else len(experiment.batches)
    workers = min(settings.workers, count) if settings.workers else None
    argv = sbatch_options(
        settings,
        experiment.container_settings,
        job_name="faice-<run id>",
        array=slurm_cli.array_spec(workers or len(experiment.batches), request.options.parallel or settings.max_running),
        output=rundir.log_pattern(outdir),
        workdir=str(outdir),
        batches_per_task=settings.batches_per_worker if workers else 1,
    )
    submission = str(outdir / "slurm" / "1")
    plan: dict[str, Any] = {
        "engine": "slurm",
        "sbatch": ["sbatch", *argv, str(outdir / "slurm" / "1" / "job.sh")],
        "taskCommand": ([settings.python, "-m", WORKER_MODULE, submission] if workers else
                        [settings.python, "-m", TASK_MODULE, submission, "$SLURM_ARRAY_TASK_ID"]),
        "batches": [{"task": i, "id": b.id, "index": b.index, "parameters": b.parameters}
                    for i, b in enumerate(experiment.batches)],
    }
    if workers:
        plan["workers"] = workers
        plan["batchesPerWorker"] = settings.batches_per_worker
    if spec is not None:  # its batches are proposed while it runs, added to the workers' queue
        plan["search"] = {"algorithm": spec.algorithm, "trials": spec.trials, "seed": spec.seed,
                          "maxConcurrent": spec.max_concurrent,
                          "parameters": {name: {kind: arguments} for name, (kind, arguments) in spec.parameters.items()}}
    return plan


def plan_text(plan: dict[str, Any]) -> str:
    """The plan as ``faice exec --dry-run`` prints it without ``--json``."""
    lines = ["Slurm plan (nothing submitted):", "  " + shlex.join(plan["sbatch"])]
    if plan.get("workers"):
        lines.append(f"  {plan['workers']} workers, each running up to {plan['batchesPerWorker']} batch(es) at once,"
                     " claim the batches below from the run directory")
    lines += [f"  task {e['task']}: batch {e['id']} {dumps_json(e['parameters'])}" for e in plan["batches"]]
    search = plan.get("search")
    if search is not None:
        lines.append(f"  search ({search['algorithm']}): {search['trials']} trials proposed while the workers run, "
                     f"added to their queue by this process")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- run directories


def refresh_status(outdir: Path, *, wait: bool = False) -> dict[str, Any]:
    """``faice status --outdir`` of a Slurm run: ask Slurm, rewrite run.json (follow the
    array until every batch is final with ``wait``) and return it."""
    outdir = Path(outdir).resolve()
    if wait:
        from faice.engines.slurm.progress import Follower

        jobs = open_run(outdir)
        index = {b: i for job in jobs for b, i in job.batch_index.items()}
        wait_run(jobs, Follower(outdir, index, live=False).update)
    return refresh_run(outdir)


def cancel(outdir: Path, target: str | None) -> int:
    """``faice cancel ID --outdir``: the batch ``ID``, or every unfinished batch when ``ID`` is
    the run id (or ``all``)."""
    outdir = Path(outdir).resolve()
    run = refresh_run(outdir)
    batch_id = None if target in (None, "all", run.get("runId")) else target
    cancelled = cancel_run(outdir, batch_id)
    if batch_id is None:
        # A search's workers wait on an open queue for trials its driver would add: a driver
        # that was killed adds none, so they go now instead of after leaseSeconds.
        # Its driver, if alive, proposes no more (it sees the cancel) and removes the rest.
        for job in open_run(outdir):
            if isinstance(job, PackedJob) and job.queue.more_may_come(float("inf")):
                job.queue.request_cancel_all()
                job.queue.close()
    if cancelled:
        wait_run(open_run(outdir))
    refresh_run(outdir)
    if cancelled:
        _say(f"faice: cancelled {len(cancelled)} batch{'es' if len(cancelled) != 1 else ''}: {', '.join(cancelled)}")
    else:
        _say("faice: nothing to cancel: every batch is final")
    return 0


ENGINE = Engine("slurm", frozenset({
    "outdir", "dry_run", "wait", "resume", "parallel", "fail_fast", "max_failures", "retries", "timeout",
    "pull", "disable_pull", "leave_container", "preserve_environment", "runtime",
}), run, plan, plan_text)
