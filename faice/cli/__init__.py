"""The ``faice`` command line: a thin argparse layer with one error handler.

Command modules in :mod:`faice.cli.commands` import only the standard library at module
level, so building the parser (``--help``, ``--version``) stays fast; each command's
``run(args)`` imports what it needs.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence

from faice.cli.parser import build_parser
from faice.errors import FaiceError

EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    debug = bool(getattr(args, "debug", False)) or os.environ.get("FAICE_DEBUG") == "1"
    try:
        return int(args.run(args) or 0)
    except FaiceError as exc:
        return _report(f"faice: error: {exc}", exc.exit_code, debug)
    except KeyboardInterrupt:
        return _report("faice: interrupted", EXIT_INTERRUPTED, debug)
    except BrokenPipeError:
        # The reader went away (e.g. `faice ... | head`); quietly stop writing.
        _silence_stdout()
        return 1
    except Exception as exc:  # a bug: say so, without a traceback unless asked for
        message = f"faice: internal error: {type(exc).__name__}: {exc}"
        if not debug:
            message += "\n(run again with --debug for a traceback, and please report it)"
        return _report(message, 1, debug)


def _report(message: str, code: int, debug: bool) -> int:
    from faice.secrets import REDACTOR

    if debug:
        sys.stderr.write(REDACTOR.redact(traceback.format_exc()))
    sys.stderr.write(REDACTOR.redact(message) + "\n")
    sys.stderr.flush()
    return code


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass

