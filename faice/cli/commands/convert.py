"""``faice convert format|cwl|batches|sweep`` (upstream names and flags)."""

from __future__ import annotations

from faice.cli.options import add_debug, add_format
from faice.cli.parser import new_command


def add_parser(subparsers) -> None:
    convert = new_command(subparsers, "convert", help="convert formats, extract CWL, expand sweeps, split batches")
    commands = convert.add_subparsers(title="conversions", metavar="CONVERSION")

    fmt = new_command(
        commands,
        "format",
        help="print a JSON/YAML file in another format",
        examples="  faice convert format --format=json cnn-training.cwl.yml > cnn-training.cwl.json",
    )
    fmt.add_argument("file", metavar="FILE", help="JSON or YAML file: path, - or http(s) URL")
    add_format(fmt)
    add_debug(fmt)
    fmt.set_defaults(run=_conversion("format"))

    cwl = new_command(
        commands,
        "cwl",
        help="print the embedded CWL CommandLineTool (cli section) of a RED file",
        examples="  faice convert cwl experiment.red.yml > tool.cwl",
    )
    cwl.add_argument("red_file", metavar="REDFILE")
    add_format(cwl)
    add_debug(cwl)
    cwl.set_defaults(run=_conversion("cwl"))

    batches = new_command(
        commands,
        "batches",
        help="write one RED file per batch (faice_batch_<i>.<ext>) into the current directory",
        examples="  faice convert batches sweep.red.yml --format json --prefix lr_",
    )
    batches.add_argument("red_file", metavar="REDFILE")
    batches.add_argument("--prefix", default="faice_", help="file name prefix (default: faice_)")
    batches.add_argument("--outdir", metavar="DIR", default=".", help="directory to write to (default: .)")
    add_format(batches)
    add_debug(batches)
    batches.set_defaults(run=_conversion("batches"))

    sweep = new_command(
        commands,
        "sweep",
        help="print the RED file with its sweep expanded into an explicit batches list",
        examples="  faice convert sweep sweep.red.yml --format json > batches.red.json",
    )
    sweep.add_argument("red_file", metavar="REDFILE")
    add_format(sweep)
    add_debug(sweep)
    sweep.set_defaults(run=_conversion("sweep"))


def _conversion(name: str):
    def run(args) -> int:
        from faice.red.convert import run_convert_command

        return run_convert_command(name, args)

    return run
