"""One small DB-API layer over SQLite (default, embedded) and PostgreSQL (psycopg 3).

SQL is written once with ``?`` placeholders and portable types; for PostgreSQL the
placeholders become ``%s``. A single connection guarded by a lock serves the whole server:
every statement is short, and it keeps SQLite free of "database is locked" surprises.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from faice.errors import UsageError

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
    """A connection, its dialect and a lock; ``query``/``execute``/``transaction``."""

    def __init__(self, url: str):
        self.url = url
        self._lock = threading.RLock()
        if url.startswith(("postgresql://", "postgres://")):
            self.dialect = "postgresql"
            self._conn = _connect_postgres(url)
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

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._lock:
            cursor = self._conn.execute(self._sql(sql), tuple(params))
            return cursor.rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return list(self._conn.execute(self._sql(sql), tuple(params)).fetchall())

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All statements inside commit together (the lock is held throughout)."""
        with self._lock:
            if self.dialect == "postgresql":
                with self._conn.transaction():
                    yield
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


def _connect_postgres(url: str):
    try:
        import psycopg
    except ImportError:
        raise UsageError("PostgreSQL needs psycopg 3: pip install 'faice[postgres]'") from None
    from urllib.parse import urlsplit

    from faice.secrets import REDACTOR

    REDACTOR.add(urlsplit(url).password)
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise UsageError(f"--db: cannot connect to PostgreSQL: {REDACTOR.redact(str(exc)).strip()}") from None
