"""``faice status|logs|cancel|list``: follow experiments on a CC-Agency or a Slurm/local run."""

from __future__ import annotations

from faice.cli.options import add_debug, add_variables
from faice.cli.parser import new_command


def _add_agency_options(parser) -> None:
    group = parser.add_argument_group("where")
    group.add_argument("--agency", metavar="URL", help="agency URL (default: from --red-file, then the config file)")
    group.add_argument("--red-file", metavar="REDFILE", help="take the agency URL and credentials from this RED file's execution section")
    group.add_argument("--outdir", metavar="DIR", help="a local or Slurm run directory instead of an agency")
    group.add_argument("--json", action="store_true", help="print JSON")
    add_variables(parser)
    add_debug(parser)


def add_parser(subparsers) -> None:
    status = new_command(
        subparsers,
        "status",
        help="show the state of an experiment or batch (agency, Slurm or local run)",
        examples="  faice status 65f0c1...\n  faice status --outdir runs/lr\n  faice status --agency https://agency.example.org --json",
    )
    status.add_argument("id", metavar="ID", nargs="?", help="experiment or batch id (default: your recent experiments)")
    status.add_argument("--wait", action="store_true", help="follow until every batch is final")
    _add_agency_options(status)
    status.set_defaults(run=_command("status"))

    logs = new_command(
        subparsers,
        "logs",
        help="print a batch's stdout (or --stderr)",
        examples="  faice logs 65f0c1...\n  faice logs --stderr 65f0c1...",
    )
    logs.add_argument("id", metavar="BATCH_ID")
    logs.add_argument("--stderr", action="store_true", help="print stderr instead of stdout")
    _add_agency_options(logs)
    logs.set_defaults(run=_command("logs"))

    cancel = new_command(
        subparsers,
        "cancel",
        help="cancel a batch or every batch of an experiment",
        examples="  faice cancel 65f0c1...",
    )
    cancel.add_argument("id", metavar="ID", help="experiment or batch id")
    _add_agency_options(cancel)
    cancel.set_defaults(run=_command("cancel"))

    listing = new_command(
        subparsers,
        "list",
        help="list experiments on an agency",
        examples="  faice list --agency http://127.0.0.1:8080 --limit 5",
    )
    listing.add_argument("--limit", type=int, default=20, help="at most this many (default: 20)")
    _add_agency_options(listing)
    listing.set_defaults(run=_command("list"))


def _command(name: str):
    def run(args) -> int:
        from faice.engines.follow import run_follow_command

        return run_follow_command(name, args)

    return run
