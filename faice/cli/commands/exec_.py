"""``faice exec REDFILE``: run every batch on the engine named in ``execution.engine``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from faice.cli.options import add_debug, add_policy, add_variables, apply_policy, variable_sources
from faice.cli.parser import lazy, new_command
from faice.errors import UsageError


def add_parser(subparsers) -> None:
    parser = new_command(
        subparsers,
        "exec",
        run=lazy("faice.cli.commands.exec_:run"),
        help="run an experiment: locally in Docker, on a CC-Agency, or on Slurm",
        description=(
            "Run every batch of a RED file. The engine comes from execution.engine:\n"
            "ccfaice/local (this host's Docker engine, the default), ccagency (a remote\n"
            "CC-Agency) or slurm. Locally each batch runs in its own container, concurrently,\n"
            "with its own GPUs and memory limit; records go to --outdir."
        ),
        examples=(
            "  faice exec sweep.red.yml --dry-run\n"
            "  faice exec sweep.red.yml --outdir runs/lr --parallel 2 --variables vars.yml\n"
            "  faice exec sweep.red.yml --resume --outdir runs/lr\n"
            "  faice exec agency.red.yml --wait"
        ),
    )
    parser.add_argument("red_file", metavar="REDFILE", help="RED file: path, - for stdin, or http(s) URL")
    add_variables(parser)

    local = parser.add_argument_group("local engine (ccfaice)")
    local.add_argument("--outdir", metavar="DIR", help="run directory (default: ./faice-runs/<time>-<run id>)")
    local.add_argument("--parallel", metavar="N", type=int, help="batches at a time (default: the CPU count but at least 4, bounded by total RAM / ram, free GPUs and maxConcurrent)")
    local.add_argument("--dry-run", action="store_true", help="print the plan (batches, commands, image, GPUs, mounts) and run nothing")
    local.add_argument("--resume", action="store_true", help="skip batches that already succeeded in --outdir with the same batch id")
    failing = local.add_mutually_exclusive_group()
    failing.add_argument("--keep-going", dest="fail_fast", action="store_false", default=False, help="run every batch even if some fail (default)")
    failing.add_argument("--fail-fast", dest="fail_fast", action="store_true", help="stop starting batches after the first failure")
    local.add_argument("--max-failures", metavar="N", type=int, help="stop starting batches after N failures")
    local.add_argument("--retries", metavar="N", type=int, default=0, help="retry a batch N times after a transient failure (default: 0)")
    local.add_argument("--timeout", metavar="SECONDS", type=float, help="wall-clock limit of one batch's command")
    local.add_argument("--gpu-ids", metavar="IDS", help='restrict GPUs to these ids, e.g. "0,2" (never more than requested)')
    pulling = local.add_mutually_exclusive_group()
    pulling.add_argument("--pull", choices=("missing", "always", "never"),
                         help="pull the image: when not present (default), before every run "
                              "(notices a moved tag), or never")
    pulling.add_argument("--disable-pull", action="store_true", help="never pull the image (same as --pull never)")
    local.add_argument("--gpu-busy", choices=("skip", "wait", "ignore"), default="skip",
                       help="GPUs running processes faice did not start: place elsewhere (skip, default), wait for them, or ignore")
    local.add_argument("--runtime", choices=("docker", "podman", "charliecloud", "apptainer", "enroot", "pyxis"),
                       help="container runtime for this run instead of the RED file's container.engine "
                            "(default docker); see docs/runtimes.md")
    local.add_argument("--leave-container", action="store_true", help="keep containers (and their mounts) after the batch")
    local.add_argument("--preserve-environment", metavar="ENVVAR", action="append", default=[], help="pass this host environment variable into the container; repeatable")
    local.add_argument("--insecure", action="store_true", help="accepted for compatibility; mounts are made on the host, no extra capabilities needed")
    local.add_argument("--no-progress", action="store_true", help="plain log lines instead of the live progress display")

    remote = parser.add_argument_group("ccagency / slurm engines")
    remote.add_argument("--wait", action="store_true", help="follow the batches until all are final; exit 1 if any failed")
    remote.add_argument("--disable-retry", action="store_true", help="ask CC-Agency not to retry failed batches")

    parser.add_argument("--disable-connector-validation", action="store_true", help="skip the connector access checks before running")
    parser.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")
    add_policy(parser)
    parser.add_argument("--format", choices=("json", "yaml", "yml"), default="yaml",
                        help="accepted for upstream compatibility and ignored (upstream's debug dump format); "
                             "use --json for a machine-readable summary")
    add_debug(parser)


def run(args: Any) -> int:
    """Prepare the experiment, check the flags against its engine, hand it to the engine."""
    from faice.engines import ENGINE_MODULES, engine
    from faice.engines.base import ENGINE_FLAGS
    from faice.pipeline.options import ExecRequest, RunOptions
    from faice.red.prepare import load_experiment

    options = RunOptions(
        parallel=args.parallel,
        fail_fast=args.fail_fast,
        max_failures=args.max_failures,
        retries=args.retries,
        timeout=args.timeout,
        gpu_ids=args.gpu_ids,
        pull=args.pull or "missing",
        gpu_busy=args.gpu_busy,
        disable_pull=args.disable_pull,
        leave_container=args.leave_container,
        preserve_environment=list(args.preserve_environment or []),
        disable_connector_validation=args.disable_connector_validation,
        resume=args.resume,
        runtime=args.runtime,
    )
    indexes = None
    if args.resume and args.outdir:  # resumed batches keep their $(sweep.index)
        from faice.pipeline.resume import recorded_indexes

        indexes = recorded_indexes(Path(args.outdir))
    # A dry run never needs secret values.
    experiment = load_experiment(args.red_file, variables=variable_sources(args), fill=not args.dry_run,
                                 indexes=indexes)
    allowed_programs = apply_policy(args.policy, experiment)
    if allowed_programs is not None:
        options = options.replace(allowed_programs=allowed_programs)
    name = experiment.engine
    if name not in ENGINE_MODULES:
        raise UsageError(
            f"{experiment.source}: execution.engine: unknown engine {name!r}; "
            f"expected one of {', '.join(sorted(ENGINE_MODULES))} (or local)"
        )
    chosen = engine(name)
    for flag in sorted(ENGINE_FLAGS - chosen.flags):
        if getattr(args, flag, None):
            option = "--" + flag.replace("_", "-")
            raise UsageError(f"{option} does not apply to the {name} engine of {experiment.source}",
                             hint=f"the {name} engine takes: "
                                  + ", ".join("--" + f.replace("_", "-") for f in sorted(chosen.flags)))
    _check_resume(args)
    request = ExecRequest(
        options=options,
        outdir=Path(args.outdir) if args.outdir else None,
        dry_run=args.dry_run,
        json=args.json,
        wait=args.wait,
        progress=not args.no_progress,
        disable_retry=args.disable_retry,
    )
    return chosen.execute(experiment, request)


def _check_resume(args: Any) -> None:
    """``--resume`` continues the run in ``--outdir``: without one there is nothing to
    continue; a directory with no run yet starts one, and says so."""
    if not args.resume or args.dry_run:
        return
    if not args.outdir:
        raise UsageError("--resume continues the run in --outdir DIR: give the run directory")
    from faice.pipeline.rundir import RunDir

    if not RunDir(args.outdir).run_file.is_file():
        print(f"faice: --resume: no run in {args.outdir} yet: starting a new one", file=sys.stderr)
