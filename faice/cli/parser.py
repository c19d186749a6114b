"""Builds the argparse tree from the command modules (cheap: no heavy imports)."""

from __future__ import annotations

import argparse
import importlib

from faice import __version__

# Order is the order shown in ``faice --help``.
COMMAND_MODULES = (
    "validate",
    "exec_",
    "status",
    "results",
    "ui",
    "convert",
    "schema",
    "agency",
    "agent",
    "completion",
)

DESCRIPTION = """\
faice runs reproducible, containerised experiments described by RED files: it validates
them, expands parameter sweeps into batches, runs every batch in its own (GPU) Docker
container, and moves data in and out through connectors (ssh, sshfs, http, s3, files).
"""

EPILOG = """\
examples:
  faice validate experiment.red.yml
  faice exec experiment.red.yml --dry-run
  faice exec experiment.red.yml --outdir runs/lr-sweep
  faice convert format --format=json tool.cwl.yml > tool.cwl.json

Each command has its own --help. Exit codes: 0 success, 1 failure, 2 usage error.
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faice", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter
    )
    parser.add_argument("-v", "--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"faice.cli.commands.{name}")
        module.add_parser(subparsers)
    return parser


def new_command(
    subparsers, name: str, *, help: str, description: str = "", examples: str = "", run=None, **kwargs
):
    """Create a sub-command parser with faice's help layout (description + examples);
    ``run(args) -> exit code`` is what the command does (see :func:`lazy`)."""
    epilog = f"examples:\n{examples}" if examples else None
    parser = subparsers.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=epilog,
        formatter_class=HelpFormatter,
        **kwargs,
    )
    if run is not None:
        parser.set_defaults(run=run)
    return parser


def lazy(target: str, *leading):
    """A ``run`` that imports ``"module:function"`` only when the command runs, so that
    building the parser (and ``--help``) stays cheap; ``leading`` arguments come before args."""
    module_name, function_name = target.split(":")

    def run(args) -> int:
        function = getattr(importlib.import_module(module_name), function_name)
        return function(*leading, args)

    return run
