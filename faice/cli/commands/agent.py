"""``faice agent``: upstream's RED 8 local runner, kept as a pointer to ``faice exec``."""

from __future__ import annotations

import argparse

from faice.cli.parser import new_command
from faice.errors import UsageError


def add_parser(subparsers) -> None:
    parser = new_command(
        subparsers,
        "agent",
        help="removed upstream in RED 9: use faice exec",
        run=run,
        examples="  faice exec experiment.red.yml",
    )
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def run(args) -> int:
    raise UsageError(
        "faice agent was replaced by faice exec (as in upstream faice 9): "
        "run `faice exec REDFILE`; the local engine is the default"
    )
