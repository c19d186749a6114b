"""``faice schema list|show|validate`` (upstream names and output)."""

from __future__ import annotations

import sys

from faice.cli.options import add_debug, add_format
from faice.cli.parser import lazy, new_command


def add_parser(subparsers) -> None:
    schema = new_command(subparsers, "schema", help="list, show and validate against the JSON Schemas")
    commands = schema.add_subparsers(title="actions", metavar="ACTION")

    def action(name: str, help: str, example: str, *positionals: str):
        parser = new_command(commands, name, help=help, examples=f"  {example}",
                             run=lazy("faice.cli.commands.schema:run_schema_command", name))
        for positional in positionals:
            parser.add_argument(positional.lower(), metavar=positional)
        add_format(parser)
        add_debug(parser)

    action("list", "list schema names", "faice schema list")
    action("show", "print a schema", "faice schema show red --format json", "SCHEMA")
    action("validate", "validate a file against a schema (JSON Schema only, no semantic checks)",
           "faice schema validate red experiment.red.yml", "SCHEMA", "FILE")


def slash_path(path: tuple) -> str:
    """Upstream's key notation in ``faice schema validate`` output: ``batches/0/inputs``."""
    return "/".join(str(p) for p in path)


def run_schema_command(action: str, args) -> int:
    """``faice schema list|show|validate`` with upstream's output and exit codes."""
    from faice.cli.output import dumps
    from faice.errors import FaiceError
    from faice.red.schemas import bundled_schema, load_schema, schema_names, schema_problems
    from faice.secrets import REDACTOR

    fmt = getattr(args, "format", "yaml")
    if action == "list":
        sys.stdout.write(dumps({"schemas": schema_names()}, fmt))
        return 0
    if action == "show":
        sys.stdout.write(dumps(bundled_schema(args.schema), fmt))
        return 0
    if action != "validate":
        raise FaiceError(f"unknown schema action {action!r}")
    load_schema(args.schema)  # unknown name → clear error before reading the file
    from faice.red.load import load_document, to_plain
    from faice.secrets import protected_values

    document = load_document(args.file)
    REDACTOR.add_all(protected_values(document.data))
    found = schema_problems(args.schema, to_plain(document.data))
    if not found:
        return 0
    lines = [f'[RedValidationError]\nFile "{document.name}" does not comply with schema "{args.schema}":']
    for path, message in found:
        line, column = document.locate(path)
        where = f" (line {line}, column {column})" if line is not None else ""
        lines.append(f"\tkey in red file: {slash_path(path)}{where}\n\treason: {message}")
    sys.stderr.write(REDACTOR.redact("\n".join(lines)) + "\n")
    return 1
