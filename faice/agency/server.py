"""``faice agency serve``: wire storage, vault, auth and dispatcher, and serve with waitress."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from faice.agency.notify import Hook
from faice.agency.options import ServeOptions
from faice.secrets import REDACTOR
from faice.untrusted import for_terminal, log_line

log = logging.getLogger("faice.agency")


class _OneSafeLine(logging.Filter):
    """Every record as one line without control characters, the process's secrets masked:
    request paths and every other value from a user reach the log, and a ``%0a`` would forge
    a line, a ``%1b`` act on the terminal of whoever reads it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = log_line(REDACTOR.redact(record.getMessage()))
        record.args = ()
        return True


class _SafeTraceback(logging.Formatter):
    """Tracebacks keep their lines, but no escape sequence of a value quoted in them."""

    def formatException(self, ei) -> str:
        return for_terminal(REDACTOR.redact(super().formatException(ei)), lines=True)


def setup_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_SafeTraceback("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_OneSafeLine())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)


def parse_hook(url: str) -> Hook:
    """``https://user:pw@host/path`` → a Hook with the credentials kept out of the URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        from faice.errors import UsageError

        raise UsageError(f"--notification-hook {REDACTOR.redact(url)!r}: expected an http(s) URL")
    REDACTOR.add(parts.password)
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    return Hook(urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), parts.username, parts.password)


def default_paths(db_url: str, workdir: str | None, key_file: str | None) -> tuple[Path, Path]:
    if db_url.startswith("sqlite:///") and db_url[len("sqlite:///"):] not in ("", ":memory:"):
        base = Path(db_url[len("sqlite:///"):]).resolve()
        work = Path(workdir) if workdir else base.with_name(base.name + ".work")
        key = Path(key_file) if key_file else base.with_name(base.name + ".key")
    else:
        work = Path(workdir or "faice-agency-work")
        key = Path(key_file) if key_file else work / "agency.key"
    work.mkdir(parents=True, exist_ok=True)
    return work.resolve(), key


def make_runner(options: ServeOptions, workdir: Path):
    """The runner for ``--engine`` and how many batches it keeps running (on Slurm: submitted)
    at once. Problems with the Slurm tools or options are reported before anything starts."""
    from faice.agency.runner import default_runner
    from faice.agency.slurm_runner import (
        DEFAULT_PARALLEL,
        SlurmRunner,
        SlurmServerSettings,
        check_cluster,
    )
    from faice.errors import UsageError

    parallel = options.parallel
    if parallel is not None and parallel < 1:
        raise UsageError("--parallel: expected a number >= 1")
    if options.engine != "slurm":
        given = options.slurm.given()
        if given:
            raise UsageError(f"{', '.join(given)}: only with --engine slurm")
        return default_runner(), parallel
    settings = SlurmServerSettings.from_flags(options.slurm)
    check_cluster(settings, workdir)
    if settings.packed:
        from faice.agency.slurm_pack import PACKED_DEFAULT_PARALLEL, PackedSlurmRunner

        return PackedSlurmRunner(settings, workdir), parallel or PACKED_DEFAULT_PARALLEL
    return SlurmRunner(settings, workdir), parallel or DEFAULT_PARALLEL


def build(options: ServeOptions):
    """The WSGI app and its dispatcher for these options (also used by tests in-process)."""
    from faice.agency.app import MAX_BODY_BYTES, Agency, AgencyApp
    from faice.agency.auth import Authenticator, LockoutPolicy
    from faice.agency.db import Database
    from faice.agency.dispatcher import Dispatcher
    from faice.agency.store import Store
    from faice.agency.vault import Vault, load_or_create_key

    db = Database(options.db)
    workdir, key_file = default_paths(options.db, options.workdir, options.secret_key_file)
    vault = Vault(db, load_or_create_key(str(key_file)))
    policy = LockoutPolicy(
        max_failures=options.login_attempts or LockoutPolicy.max_failures,
        window=options.block_seconds or LockoutPolicy.window,
    )
    store = Store(db, log_cap=options.max_log_bytes)
    runner, parallel = make_runner(options, workdir)
    dispatcher = Dispatcher(
        store,
        vault,
        runner,
        workdir,
        parallel=parallel,
        max_attempts=options.max_attempts or 2,
        hooks=[parse_hook(u) for u in options.notification_hooks],
        paused=options.paused,
    )
    agency = Agency(
        store, vault, Authenticator(db, vault.signing_key, policy), dispatcher,
        policy=connector_policy(options.policy, db, workdir, key_file),
        limits=_limits(options),
        max_body_bytes=_positive("max_request_bytes", options.max_request_bytes, MAX_BODY_BYTES),
    )
    return AgencyApp(agency), dispatcher, db


def connector_policy(path: str | None, db, workdir: Path, key_file: Path):
    """``--policy FILE`` (or the safe default) protecting the server's own files: database,
    key, work dir, policy file and log files, wherever the roots point."""
    from faice.connectors.policy import Policy, load_policy

    policy = load_policy(path) if path else Policy()
    own: list[str | Path | None] = [workdir, key_file, path, "/proc"]  # /proc/self/environ, fds
    if db.dialect == "sqlite" and db.path != ":memory:":
        own += [db.path + suffix for suffix in ("", "-wal", "-shm", "-journal")]
    for handler in logging.getLogger().handlers:
        own.append(getattr(handler, "baseFilename", None))
    return policy.protecting(*own)


def _positive(name: str, value: int | None, default: int) -> int:
    from faice.errors import UsageError

    if value is None:
        return default
    if value < 1:
        raise UsageError(f"--{name.replace('_', '-')}: expected a number >= 1")
    return value


def _limits(options: ServeOptions):
    from faice.agency.submit import Limits

    return Limits(
        max_batches=_positive("max_batches", options.max_batches, Limits.max_batches),
        max_red_bytes=_positive("max_red_bytes", options.max_red_bytes, Limits.max_red_bytes),
    )


def serve(options: ServeOptions) -> int:
    from waitress.server import create_server

    setup_logging(options.debug)
    app, dispatcher, db = build(options)
    server = create_server(app, host=options.host, port=options.port, threads=8, ident="faice-agency")
    stopping: list[int] = []

    def shutdown(signum, frame):
        # A signal handler: no lock (not even an Event's), no I/O; the first signal only
        # leaves waitress's loop in the main thread, and the ``finally`` below stops the rest.
        if not stopping:
            stopping.append(signum)
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    dispatcher.start()
    log.info(
        "faice agency %s listening on http://%s:%s (database %s, runner %s, parallel %d)",
        os.getpid(), options.host, server.effective_port, REDACTOR.redact(options.db),
        type(dispatcher.runner).__name__, dispatcher.parallel,
    )
    try:
        server.run()  # waitress catches shutdown()'s KeyboardInterrupt itself and returns
    except KeyboardInterrupt:
        pass
    finally:
        log.info("stopping: running batches are stopped and resume at the next start")
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.close()
        dispatcher.stop()
        db.close()
        log.info("stopped")
    return 0
