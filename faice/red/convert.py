"""``faice convert format|cwl|sweep|batches``: reformat files, extract the CWL tool, expand
sweeps and split batches into plain RED files that upstream tools accept.

Conversions never fill ``{{variables}}``: secrets stay placeholders in everything written.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

from faice.errors import FaiceError, UsageError


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


def batch_documents(data: dict, source: str) -> list[dict]:
    """One single-batch RED document per batch: the RED without ``batches``/``sweep`` plus
    that batch's ``inputs`` and (when non-empty) ``outputs`` and ``cloud``."""
    from faice.red.sweep import expanded_red

    expanded = expanded_red(data, source)
    if "batches" not in expanded:
        return [expanded]
    base = {key: value for key, value in expanded.items() if key != "batches"}
    documents = []
    for batch in expanded["batches"]:
        document = dict(base)
        document["inputs"] = batch.get("inputs") or {}
        if batch.get("outputs"):
            document["outputs"] = batch["outputs"]
        if batch.get("cloud"):
            document["cloud"] = batch["cloud"]
        documents.append(document)
    return documents


def _has_literal_secrets(data: dict) -> bool:
    """True when a protected key holds a real value, not only ``{{variable}}`` placeholders."""
    import re

    from faice.secrets import protected_values

    return any(re.sub(r"\{\{[^{}]*\}\}", "", value).strip() for value in protected_values(data))


def _validated(source: str) -> tuple[str, dict]:
    """Load and validate a RED file; every problem is reported at once."""
    from faice.errors import ValidationError
    from faice.red.load import load_mapping, to_plain

    document = load_mapping(source, "RED file")
    try:
        from faice.red.validate import validate_red
    except ImportError:  # the full validator is not there: check what conversions rely on
        from faice.red.sweep import sweep_problems
        from faice.red.variables import variable_problems

        problems = sweep_problems(document.data, document.name) + variable_problems(document.data, document.name)
        if problems:
            raise ValidationError(problems) from None
    else:
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
