"""``faice schema list|show|validate`` (upstream names and output)."""

from __future__ import annotations

from faice.cli.options import add_debug, add_format
from faice.cli.parser import lazy, new_command


def add_parser(subparsers) -> None:
    schema = new_command(subparsers, "schema", help="list, show and validate against the JSON Schemas")
    commands = schema.add_subparsers(title="actions", metavar="ACTION")

    def action(name: str, help: str, example: str, *positionals: str):
        parser = new_command(commands, name, help=help, examples=f"  {example}",
                             run=lazy("faice.red.schemas:run_schema_command", name))
        for positional in positionals:
            parser.add_argument(positional.lower(), metavar=positional)
        add_format(parser)
        add_debug(parser)

    action("list", "list schema names", "faice schema list")
    action("show", "print a schema", "faice schema show red --format json", "SCHEMA")
    action("validate", "validate a file against a schema (JSON Schema only, no semantic checks)",
           "faice schema validate red experiment.red.yml", "SCHEMA", "FILE")
