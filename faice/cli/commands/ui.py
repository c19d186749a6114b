"""``faice ui [DIR…]``: the runs under DIR as web pages (read-only, on loopback by default)."""

from __future__ import annotations

from faice.cli.options import add_debug
from faice.cli.parser import lazy, new_command

DEFAULT_PORT = 8765


def add_parser(subparsers) -> None:
    parser = new_command(
        subparsers,
        "ui",
        run=lazy("faice.cli.commands.ui:run_ui"),
        help="look at runs in a browser: ranked batches, learning curves, logs (read-only)",
        description=(
            "Serve web pages over run directories (local, Slurm or agency runs): the runs with\n"
            "their state and best objective; a run's ranked batches (sortable, filterable), its\n"
            "learning curves with the best batch marked, each parameter against the objective,\n"
            "failures and early stops; a batch's record, metrics, stdout/stderr and outputs.\n"
            "Running runs update in the page without a reload. Each DIR is a run directory or a\n"
            "directory of them (default: faice-runs). Nothing is changed on disk.\n"
            "On 127.0.0.1 (the default) no token is asked; on any other --host the printed URL\n"
            "carries an access token that every request needs."
        ),
        examples=(
            "  faice ui                                 # ./faice-runs on http://127.0.0.1:8765/\n"
            "  faice ui runs/ --port 9000\n"
            "  faice ui runs/lr-sweep runs/bs-sweep\n"
            "  faice ui runs/ --host 0.0.0.0            # prints http://HOST:8765/?token=…"
        ),
    )
    parser.add_argument("dirs", nargs="*", metavar="DIR", help="run directories or directories of them (default: faice-runs)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}; 0: any free one)")
    add_debug(parser)


def run_ui(args) -> int:
    import sys
    from pathlib import Path

    from faice.agency.ui.local import serve
    from faice.errors import UsageError

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: expected 0 to 65535")
    roots = [Path(d) for d in (args.dirs or ["faice-runs"])]
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        raise UsageError(f"not a directory: {', '.join(missing)}", hint="give run directories (faice exec --outdir) or their parent")
    return serve(roots, host=args.host, port=args.port, announce=lambda line: print(line, file=sys.stderr, flush=True))
