"""``faice schema list|show|validate`` (upstream names and output)."""

from __future__ import annotations

from faice.cli.options import add_debug, add_format
from faice.cli.parser import new_command


def add_parser(subparsers) -> None:
    schema = new_command(subparsers, "schema", help="list, show and validate against the JSON Schemas")
    commands = schema.add_subparsers(title="actions", metavar="ACTION")

    listing = new_command(commands, "list", help="list schema names", examples="  faice schema list")
    add_format(listing)
    add_debug(listing)
    listing.set_defaults(run=_action("list"))

    show = new_command(commands, "show", help="print a schema", examples="  faice schema show red --format json")
    show.add_argument("schema", metavar="SCHEMA")
    add_format(show)
    add_debug(show)
    show.set_defaults(run=_action("show"))

    validate = new_command(
        commands,
        "validate",
        help="validate a file against a schema (JSON Schema only, no semantic checks)",
        examples="  faice schema validate red experiment.red.yml",
    )
    validate.add_argument("schema", metavar="SCHEMA")
    validate.add_argument("file", metavar="FILE")
    add_format(validate)
    add_debug(validate)
    validate.set_defaults(run=_action("validate"))


def _action(name: str):
    def run(args) -> int:
        from faice.red.schemas import run_schema_command

        return run_schema_command(name, args)

    return run
