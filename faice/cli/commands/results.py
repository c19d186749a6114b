"""``faice results OUTDIR``: which batch won — the batches of a run ranked by the metrics objective."""

from __future__ import annotations

import sys

from faice.cli.options import add_debug
from faice.cli.parser import lazy, new_command

FORMATS = ("table", "csv", "json", "markdown")


def add_parser(subparsers) -> None:
    parser = new_command(
        subparsers,
        "results",
        run=lazy("faice.cli.commands.results:run_results"),
        help="rank the batches of a run by their metrics: parameters, state, duration, metrics",
        description=(
            "Read a run directory (local, Slurm or agency run: run.json and batches/*/result.json)\n"
            "and print one row per batch with its sweep parameters, state, duration and final\n"
            "metrics, sorted by the objective of the RED file's metrics section (best first;\n"
            "batches without a value last) and the best batch marked with *. CSV and JSON have\n"
            "flat columns (param.NAME, metric.NAME) that load straight into pandas. A search\n"
            "(sweep.search) also lists its trials in the order they were proposed: where each came\n"
            "from (startup or sampler), its value, the best so far and what stopped it; its CSV and\n"
            "JSON rows have the columns trial, origin and stoppedBy."
        ),
        examples=(
            "  faice results runs/lr-sweep\n"
            "  faice results runs/lr-sweep --format csv > results.csv\n"
            "  faice results runs/lr-sweep --objective val_loss --goal min --top 5\n"
            "  faice results runs/lr-sweep --plot val_accuracy      # needs: pip install 'faice[plot]'\n"
            "  faice results runs/lr-sweep --to-mlflow              # ./mlruns; then: mlflow ui\n"
            "  faice results runs/lr-sweep --ro-crate lr-sweep-crate  # a Process Run RO-Crate"
        ),
    )
    parser.add_argument("outdir", metavar="OUTDIR", help="the run directory (faice exec --outdir)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    parser.add_argument("--objective", metavar="METRIC", help="rank by this metric instead of the recorded objective")
    parser.add_argument("--goal", choices=("min", "max"), help="with --objective: which way is better (default: the goal recorded for "
                             "that metric, else max)")
    parser.add_argument("--red", metavar="REDFILE",
                        help="read the metrics of batches whose records have none from their outputs, "
                             "as this RED file's metrics section says")
    parser.add_argument("--top", type=int, metavar="N", help="only the N best batches")
    parser.add_argument("--plot", metavar="METRIC", help="also write PNGs of METRIC over steps and against each parameter "
                             "(a search: its optimisation history and parameter importance too)")
    parser.add_argument("--plot-dir", metavar="DIR", help="where the PNGs go (default: OUTDIR/plots)")
    parser.add_argument("--to-mlflow", metavar="URI", nargs="?", const="./mlruns",
                        help="also export one MLflow run per batch to this tracking URI or directory "
                             "(default ./mlruns; needs pip install 'faice[mlflow]')")
    parser.add_argument("--experiment", metavar="NAME",
                        help="with --to-mlflow: the MLflow experiment (default: 'faice <run directory name>')")
    parser.add_argument("--ro-crate", metavar="DIR",
                        help="also write the run as a Process Run RO-Crate into the new directory DIR: the RED "
                             "file (secrets masked), the CWL tool, the image, each batch's parameters, metrics, "
                             "timings, GPUs and outputs (with SHA-256)")
    add_debug(parser)


def run_results(args) -> int:
    """Print the ranked table; write plots when asked (their paths on stderr)."""
    from pathlib import Path

    from faice.errors import UsageError
    from faice.pipeline.results import load_results, plot, pyplot, render
    from faice.untrusted import for_terminal

    if args.goal and not args.objective:
        raise UsageError("--goal needs --objective (the recorded objective has its own goal)")
    if args.top is not None and args.top < 1:
        raise UsageError(f"--top {args.top}: expected a positive number of batches")
    if args.plot:
        pyplot()  # say that matplotlib is missing before printing anything
        if not args.plot_dir and (Path(args.outdir) / "plots").is_symlink():
            raise UsageError(f"{Path(args.outdir) / 'plots'}: a symbolic link; faice writes plots into the run "
                             "directory only", hint="give --plot-dir DIR to write them elsewhere")
    if args.experiment and not args.to_mlflow:
        raise UsageError("--experiment needs --to-mlflow")
    if args.to_mlflow:
        from faice.pipeline.results import require_mlflow

        require_mlflow()
    objective = {"name": args.objective, "goal": args.goal} if args.objective else None
    spec = None
    if args.red:
        from faice.red.load import load_mapping, to_plain
        from faice.red.metrics import MetricsSpec

        document = load_mapping(args.red, "RED file")
        spec = MetricsSpec.from_red(to_plain(document.data), document.name)
        if spec is None:
            raise UsageError(f"--red {args.red}: the RED file has no metrics section")
    results = load_results(Path(args.outdir), objective=objective, spec=spec)
    sys.stdout.write(render(results, args.format, top=args.top))
    from faice.pipeline.trials import plot_search, read_search, render_trials

    search = read_search(Path(args.outdir))
    if search is not None and args.format in ("table", "markdown"):
        sys.stdout.write(render_trials(search, args.format))
    sys.stdout.flush()
    if results.dropped:
        count = len(results.dropped)
        print(f"faice: {count} batch director{'y' if count == 1 else 'ies'} under batches/ "
              f"{'is' if count == 1 else 'are'} not part of this run (an earlier version of the sweep; "
              f"--resume keeps them) and not ranked, e.g. {for_terminal(results.dropped[0])}", file=sys.stderr)
    if args.to_mlflow:
        from faice.pipeline.results import to_mlflow

        counts = to_mlflow(results, args.to_mlflow, experiment=args.experiment,
                           warn=lambda text: print(f"faice: warning: {text}", file=sys.stderr))
        print(f"MLflow ({args.to_mlflow}): {counts['exported']} batches exported, "
              f"{counts['skipped']} exported before", file=sys.stderr)
    if args.ro_crate:
        from faice.pipeline.rocrate import write_crate

        print(f"wrote the RO-Crate {write_crate(Path(args.outdir), Path(args.ro_crate))}", file=sys.stderr)
    if args.plot:
        directory = Path(args.plot_dir) if args.plot_dir else Path(args.outdir) / "plots"
        written = plot(results, args.plot, directory)
        if search is not None:
            written += plot_search(Path(args.outdir), search, directory, pyplot())
        for path in written:
            print(f"wrote {path}", file=sys.stderr)
    return 0
