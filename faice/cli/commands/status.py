"""``faice status|logs|cancel|list``: follow experiments on a CC-Agency or a Slurm/local run."""

from __future__ import annotations

from faice.cli.options import add_debug, add_variables
from faice.cli.parser import lazy, new_command


def _add_agency_options(parser) -> None:
    group = parser.add_argument_group("where")
    group.add_argument("--agency", metavar="URL", help="agency URL (default: from --red-file, then the config file)")
    group.add_argument("--red-file", metavar="REDFILE", help="take the agency URL and credentials from this RED file's execution section")
    group.add_argument("--outdir", metavar="DIR", help="a local or Slurm run directory instead of an agency")
    group.add_argument("--json", action="store_true", help="print JSON")
    add_variables(parser)
    add_debug(parser)


def add_parser(subparsers) -> None:
    def command(name: str, help: str, examples: str):
        return new_command(subparsers, name, help=help, examples=examples,
                           run=lazy("faice.engines.follow:run_follow_command", name))

    status = command("status", "show the state of an experiment or batch (agency, Slurm or local run)",
                     "  faice status 65f0c1...\n  faice status --outdir runs/lr\n"
                     "  faice status --agency https://agency.example.org --json")
    status.add_argument("id", metavar="ID", nargs="?", help="experiment or batch id (default: your recent experiments)")
    status.add_argument("--wait", action="store_true", help="follow until every batch is final")
    _add_agency_options(status)

    logs = command("logs", "print a batch's stdout (or --stderr)", "  faice logs 65f0c1...\n  faice logs --stderr 65f0c1...")
    logs.add_argument("id", metavar="BATCH_ID")
    logs.add_argument("--stderr", action="store_true", help="print stderr instead of stdout")
    _add_agency_options(logs)

    cancel = command("cancel", "cancel a batch or every batch of an experiment", "  faice cancel 65f0c1...")
    cancel.add_argument("id", metavar="ID", help="experiment or batch id")
    _add_agency_options(cancel)

    listing = command("list", "list experiments on an agency", "  faice list --agency http://127.0.0.1:8080 --limit 5")
    listing.add_argument("--limit", type=int, default=20, help="at most this many (default: 20)")
    _add_agency_options(listing)
