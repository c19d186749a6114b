"""``faice convert format|cwl|batches|sweep`` (upstream names and flags): reformat files,
extract the CWL tool, expand sweeps and split batches into plain RED files.

Conversions never fill ``{{variables}}``: secrets stay placeholders in everything written.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

from faice.cli.options import add_debug, add_format
from faice.cli.parser import lazy, new_command
from faice.errors import FaiceError, UsageError


def add_parser(subparsers) -> None:
    convert = new_command(subparsers, "convert", help="convert formats, extract CWL, expand sweeps, split batches")
    commands = convert.add_subparsers(title="conversions", metavar="CONVERSION")

    def conversion(name: str, help: str, example: str, *, red_file: bool = True):
        parser = new_command(commands, name, help=help, examples=f"  {example}",
                             run=lazy("faice.cli.commands.convert:run_convert_command", name))
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
    batches = conversion("batches", "write one RED file per batch (faice_batch_<i>.<ext>) into --outdir (default: .)",
                         "faice convert batches sweep.red.yml --format json --prefix lr_")
    batches.add_argument("--prefix", default="faice_", help="file name prefix (default: faice_)")
    batches.add_argument("--outdir", metavar="DIR", default=".", help="directory to write to (default: .)")
    conversion("sweep", "print the RED file with its sweep expanded into an explicit batches list",
               "faice convert sweep sweep.red.yml --format json > batches.red.json")


def run_convert_command(name: str, args: Any) -> int:
    conversions = {"format": convert_format, "cwl": convert_cwl, "sweep": convert_sweep, "batches": convert_batches}
    if name not in conversions:
        raise UsageError(f"unknown conversion {name!r}; expected one of {', '.join(conversions)}")
    return conversions[name](args)


def convert_format(args: Any) -> int:
    """Print any JSON/YAML file (RED, CWL, variables …) in ``--format``."""
    from faice.cli.output import dumps
    from faice.red.load import load_document, to_plain

    document = load_document(args.file)
    _write(dumps(to_plain(document.data), args.format))
    return 0


def convert_cwl(args: Any) -> int:
    """Print the embedded CWL CommandLineTool (the ``cli`` section)."""
    from faice.cli.output import dumps
    from faice.red.load import load_mapping, to_plain

    document = load_mapping(args.red_file, "RED file")
    if "cli" not in document.data:
        raise FaiceError(f"{document.name} does not contain a cli section (the embedded CWL CommandLineTool)")
    _write(dumps(to_plain(document.data["cli"]), args.format))
    return 0


def convert_sweep(args: Any) -> int:
    """Print the RED file with its sweep expanded into ``batches`` (plain RED 8/9)."""
    from faice.cli.output import dumps
    from faice.red.sweep import expanded_red

    name, data = _validated(args.red_file)
    _write(dumps(expanded_red(data, name), args.format))
    return 0


def convert_batches(args: Any) -> int:
    """Write ``{prefix}batch_{i}.{ext}`` per batch into ``--outdir``; print nothing."""
    from faice.cli.output import dumps, extension
    from faice.red.convert import batch_documents

    name, data = _validated(args.red_file)
    outdir = getattr(args, "outdir", None) or "."
    prefix = getattr(args, "prefix", "faice_")
    if os.sep in prefix or (os.altsep and os.altsep in prefix):
        raise UsageError(f"--prefix {prefix!r} must be a file name prefix, not a path; use --outdir for the directory")
    files = {
        os.path.join(outdir, f"{prefix}batch_{index}.{extension(args.format)}"): dumps(document, args.format)
        for index, document in enumerate(batch_documents(data, name))
    }
    existing = [path for path in files if os.path.lexists(path)]
    if existing:
        raise FaiceError(
            f"{name}: not converting, {len(existing)} file{'s' if len(existing) != 1 else ''} already exist:\n"
            + "\n".join(f"  {path}" for path in existing),
            hint="remove them, or choose another --outdir or --prefix",
        )
    _write_all_or_nothing(files, outdir, private=_has_literal_secrets(data))
    return 0


def _has_literal_secrets(data: dict) -> bool:
    """True when a protected key holds a real value, not only ``{{variable}}`` placeholders."""
    import re

    from faice.secrets import protected_values

    return any(re.sub(r"\{\{[^{}]*\}\}", "", value).strip() for value in protected_values(data))


def _validated(source: str) -> tuple[str, dict]:
    """Load and validate a RED file; every problem is reported at once."""
    from faice.red.load import load_mapping, to_plain
    from faice.red.validate import validate_red

    document = load_mapping(source, "RED file")
    validate_red(document)
    return document.name, to_plain(document.data)


def _write_all_or_nothing(files: dict[str, str], outdir: str, private: bool) -> None:
    """Write every file atomically without overwriting; on any failure remove what was written."""
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as exc:
        raise FaiceError(f"{outdir}: cannot create the output directory: {exc.strerror}") from None
    written: list[str] = []
    try:
        for path, text in files.items():
            _write_new(path, text, outdir, private)
            written.append(path)
    except BaseException:
        for path in written:
            try:
                os.unlink(path)
            except OSError:
                pass
        raise


def _write_new(path: str, text: str, outdir: str, private: bool) -> None:
    """Files holding literal protected values stay 0600, like the temp file they start as."""
    handle, temporary = tempfile.mkstemp(prefix=".faice-convert-", dir=outdir)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        if not private:
            os.chmod(temporary, 0o644 & ~_umask())
        try:
            os.link(temporary, path)  # fails instead of overwriting a file that appeared meanwhile
        except FileExistsError:
            raise FaiceError(f"{path}: already exists; not overwriting it") from None
        except OSError as exc:
            raise FaiceError(f"{path}: cannot write: {exc.strerror}") from None
    finally:
        try:
            os.unlink(temporary)
        except OSError:
            pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
