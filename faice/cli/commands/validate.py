"""``faice validate REDFILE``: schema, semantics and the embedded CWL, every problem at once."""

from __future__ import annotations

from faice.cli.options import add_debug, add_variables
from faice.cli.parser import lazy, new_command


def add_parser(subparsers) -> None:
    parser = new_command(
        subparsers,
        "validate",
        run=lazy("faice.red.validate:run_validate_command"),
        help="check a RED file (schema, semantics, embedded CWL) and report every problem",
        description=(
            "Check a RED file against the RED 8/9 schemas and faice's extensions, the semantic\n"
            "rules (inputs match the cli, types, globs, variables, protected keys) and the\n"
            "embedded CWL tool (checked with cwltool). Every problem is reported with the file,\n"
            "line and key path. Variable values are never needed."
        ),
        examples=(
            "  faice validate experiment.red.yml\n"
            "  faice validate https://example.org/experiment.red.json\n"
            "  faice validate --check-access --variables vars.yml experiment.red.yml"
        ),
    )
    parser.add_argument("red_file", metavar="REDFILE", help="RED file: path, - for stdin, or http(s) URL")
    parser.add_argument(
        "--check-access",
        action="store_true",
        help="also probe every connector (credentials and remote paths); needs variable values",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    add_variables(parser)
    add_debug(parser)

