"""One small DB-API layer over SQLite (default, embedded) and PostgreSQL (psycopg 3).

SQL is written once with ``?`` placeholders and portable types; for PostgreSQL the
placeholders become ``%s``. A lock serialises all statements of the server: every statement
is short, it keeps SQLite free of "database is locked" surprises, and it makes the
read-check-write of :meth:`Store.transition` atomic on both databases.

PostgreSQL can restart under a running agency. Its one connection therefore lives in
psycopg's pool, which checks it before each use (a cheap ping) and replaces a dead one; a
statement that still meets a connection dropped between the check and its execution is
retried once on a fresh connection. A transaction is not retried (its body is the caller's
code): a request that loses its connection in the middle fails once and the next succeeds.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from faice.errors import UsageError

log = logging.getLogger("faice.agency")
# Seconds a statement waits for a PostgreSQL connection (e.g. while the server restarts).
PG_WAIT_SECONDS = 15.0

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS users (
        username TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        salt TEXT NOT NULL,
        is_admin INTEGER NOT NULL DEFAULT 0,
        failed_count INTEGER NOT NULL DEFAULT 0,
        first_failure DOUBLE PRECISION,
        blocked_until DOUBLE PRECISION)""",
    """CREATE TABLE IF NOT EXISTS experiments (
        id TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        registration_time DOUBLE PRECISION NOT NULL,
        doc TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS batches (
        id TEXT PRIMARY KEY,
        experiment_id TEXT NOT NULL,
        username TEXT NOT NULL,
        registration_time DOUBLE PRECISION NOT NULL,
        state TEXT NOT NULL,
        node TEXT,
        list_index INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        notifications_sent INTEGER NOT NULL DEFAULT 0,
        doc TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS batches_state ON batches (state, registration_time)",
    "CREATE INDEX IF NOT EXISTS batches_experiment ON batches (experiment_id)",
    # the dispatcher's two reads: experiments with waiting batches, an experiment's next ones
    "CREATE INDEX IF NOT EXISTS batches_waiting ON batches (state, experiment_id, username, registration_time)",
    "CREATE INDEX IF NOT EXISTS batches_next ON batches (experiment_id, state, registration_time, list_index)",
    """CREATE TABLE IF NOT EXISTS batch_logs (
        batch_id TEXT NOT NULL,
        name TEXT NOT NULL,
        content TEXT NOT NULL,
        PRIMARY KEY (batch_id, name))""",
    """CREATE TABLE IF NOT EXISTS secrets (
        key TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        token TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS secrets_owner ON secrets (owner)",
)


class Database:
    """The dialect, its connection (SQLite) or pool (PostgreSQL) and a lock;
    ``query``/``execute``/``transaction``."""

    def __init__(self, url: str):
        self.url = url
        self._lock = threading.RLock()
        self._conn: Any = None  # SQLite's connection
        self._pool: Any = None  # PostgreSQL's pool (of one connection)
        self._tx: Any = None  # the PostgreSQL connection of the open transaction
        if url.startswith(("postgresql://", "postgres://")):
            self.dialect = "postgresql"
            self._pool = _postgres_pool(url)
        elif url.startswith("sqlite:///"):
            # Like SQLAlchemy: sqlite:///relative.db, sqlite:////absolute/path.db
            self.dialect = "sqlite"
            self.path = url[len("sqlite:///"):] or ":memory:"
            self._conn = _connect_sqlite(self.path)
        else:
            raise UsageError(f"--db {url!r}: expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
        with self.transaction():
            for statement in SCHEMA:
                self.execute(statement)

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    def _run(self, sql: str, params: Sequence[Any], fetch: bool) -> Any:
        sql, values = self._sql(sql), tuple(params)

        def run(conn: Any) -> Any:
            cursor = conn.execute(sql, values)
            return list(cursor.fetchall()) if fetch else cursor.rowcount

        with self._lock:
            if self._pool is None:
                return run(self._conn)
            if self._tx is not None:
                return run(self._tx)
            import psycopg

            for attempt in (1, 2):
                with self._pool.connection() as conn:  # checked by the pool just now
                    try:
                        return run(conn)
                    except psycopg.OperationalError as exc:
                        if attempt == 2 or not conn.broken:
                            raise
                        log.warning("database connection lost (%s); retrying on a new connection", str(exc).strip())
            raise AssertionError("unreachable")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._run(sql, params, fetch=False)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._run(sql, params, fetch=True)

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All statements inside commit together (the lock is held throughout)."""
        with self._lock:
            if self._pool is not None:
                if self._tx is not None:  # nested: a savepoint
                    with self._tx.transaction():
                        yield
                    return
                with self._pool.connection() as conn:
                    self._tx = conn
                    try:
                        with conn.transaction():
                            yield
                    finally:
                        self._tx = None
                return
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
            else:
                self._conn.close()


def _connect_sqlite(path: str):
    import sqlite3

    if path != ":memory:":
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise UsageError(f"--db sqlite:///{path}: directory {directory} does not exist")
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.Error as exc:
        raise UsageError(f"--db sqlite:///{path}: cannot open: {exc}") from None
    if path != ":memory:":
        os.chmod(path, 0o600)
    return conn


def _postgres_pool(url: str):
    """A pool of one checked, self-replacing connection; a clear error when the first fails."""
    try:
        import psycopg
        from psycopg_pool import ConnectionPool
    except ImportError:
        raise UsageError("PostgreSQL needs psycopg 3 with its pool: pip install 'faice[postgres]'") from None
    from urllib.parse import urlsplit

    from faice.secrets import REDACTOR

    REDACTOR.add(urlsplit(url).password)
    settings: dict[str, Any] = {"autocommit": True, "connect_timeout": 10}
    try:  # the pool alone would only say "timed out"; libpq says why
        psycopg.connect(url, **settings).close()
    except psycopg.Error as exc:
        raise UsageError(f"--db: cannot connect to PostgreSQL: {REDACTOR.redact(str(exc)).strip()}") from None
    pool = ConnectionPool(
        url,
        min_size=1,
        max_size=1,
        kwargs=settings,
        check=ConnectionPool.check_connection,
        timeout=PG_WAIT_SECONDS,
        name="faice-agency",
        open=False,
    )
    pool.open(wait=True, timeout=PG_WAIT_SECONDS)
    return pool
