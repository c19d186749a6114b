"""The ``faice`` command line: a thin argparse layer with one error handler.

Command modules in :mod:`faice.cli.commands` import only the standard library at module
level, so building the parser (``--help``, ``--version``) stays fast; each command's
``run(args)`` imports what it needs.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Sequence

from faice.cli.parser import build_parser
from faice.errors import FaiceError

EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class Terminated(BaseException):
    """SIGTERM outside a run (loading, validation, printing): ends faice like Ctrl-C does."""


def _terminate(_signum: int, _frame: object) -> None:
    raise Terminated  # only raises, like Python's own SIGINT handler: no lock, no I/O


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    debug = bool(getattr(args, "debug", False)) or os.environ.get("FAICE_DEBUG") == "1"
    previous = _catch_sigterm()
    try:
        return int(args.run(args) or 0)
    except FaiceError as exc:
        return _report(f"faice: error: {exc}", exc.exit_code, debug)
    except KeyboardInterrupt:
        return _report("faice: interrupted", EXIT_INTERRUPTED, debug)
    except Terminated:
        return _report("faice: terminated", EXIT_TERMINATED, debug)
    except BrokenPipeError:
        # The reader went away (e.g. `faice ... | head`); quietly stop writing.
        _silence_stdout()
        return 1
    except Exception as exc:  # a bug: say so, without a traceback unless asked for
        message = f"faice: internal error: {type(exc).__name__}: {exc}"
        if not debug:
            message += "\n(run again with --debug for a traceback, and please report it)"
        return _report(message, 1, debug)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def console() -> None:
    """The ``faice`` program: :func:`main` with SIGTERM caught for the whole process, and both
    signals ignored once the exit code is known, so a late Ctrl-C or SIGTERM (while Python
    shuts down, joining threads) cannot turn a finished run into a death by signal."""
    import threading

    code = EXIT_INTERRUPTED
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        code = main()
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except Terminated:
        code = EXIT_TERMINATED
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
    raise SystemExit(code)


def _catch_sigterm():
    """SIGTERM → exit 143 with cleanup (runs install their own handler on top); returns the
    handler to restore, None where none was installed (not the main thread, or one is set)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return None
    return signal.signal(signal.SIGTERM, _terminate)


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

