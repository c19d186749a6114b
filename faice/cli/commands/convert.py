"""``faice convert format|cwl|batches|sweep`` (upstream names and flags)."""

from __future__ import annotations

from faice.cli.options import add_debug, add_format
from faice.cli.parser import lazy, new_command


def add_parser(subparsers) -> None:
    convert = new_command(subparsers, "convert", help="convert formats, extract CWL, expand sweeps, split batches")
    commands = convert.add_subparsers(title="conversions", metavar="CONVERSION")

    def conversion(name: str, help: str, example: str, *, red_file: bool = True):
        parser = new_command(commands, name, help=help, examples=f"  {example}",
                             run=lazy("faice.red.convert:run_convert_command", name))
        if red_file:
            parser.add_argument("red_file", metavar="REDFILE")
        add_format(parser)
        add_debug(parser)
        return parser

    fmt = conversion("format", "print a JSON/YAML file in another format",
                     "faice convert format --format=json cnn-training.cwl.yml > cnn-training.cwl.json", red_file=False)
    fmt.add_argument("file", metavar="FILE", help="JSON or YAML file: path, - or http(s) URL")
    conversion("cwl", "print the embedded CWL CommandLineTool (cli section) of a RED file",
               "faice convert cwl experiment.red.yml > tool.cwl")
    batches = conversion("batches", "write one RED file per batch (faice_batch_<i>.<ext>) into the current directory",
                         "faice convert batches sweep.red.yml --format json --prefix lr_")
    batches.add_argument("--prefix", default="faice_", help="file name prefix (default: faice_)")
    batches.add_argument("--outdir", metavar="DIR", default=".", help="directory to write to (default: .)")
    conversion("sweep", "print the RED file with its sweep expanded into an explicit batches list",
               "faice convert sweep sweep.red.yml --format json > batches.red.json")
