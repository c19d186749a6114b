"""Experiments, batches and their captured output, as CC-Agency documents.

Queried fields are columns; the rest of a document is JSON in ``doc``. Every state change
goes through :meth:`Store.transition`, which checks the previous state (optimistic locking)
and appends a history entry, so concurrent cancel/finish can never both win.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from faice.agency.db import Database
from faice.errors import UsageError

STATES = ("registered", "scheduled", "processing", "succeeded", "failed", "cancelled")
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
_BATCH_COLUMNS = "id, experiment_id, username, registration_time, state, node, list_index, attempts, notifications_sent, doc"
_EXPERIMENT_COLUMNS = "id, username, registration_time, doc"


def _batch(row: tuple) -> dict[str, Any]:
    doc = json.loads(row[9])
    doc.update(
        _id=row[0], experimentId=row[1], username=row[2], registrationTime=row[3], state=row[4],
        node=row[5], batchesListIndex=row[6], attempts=row[7], notificationsSent=bool(row[8]),
    )
    return doc


def _experiment(row: tuple) -> dict[str, Any]:
    doc = json.loads(row[3])
    doc.update(_id=row[0], username=row[1], registrationTime=row[2])
    return doc


def registered_batch(batch_id: str, experiment: dict[str, Any], index: int, inputs: Any, outputs: Any,
                     now: float, **extra: Any) -> dict[str, Any]:
    """A new batch document in state ``registered`` (``inputs``/``outputs`` already sealed):
    the batches of a submitted experiment and the trials a search adds later."""
    return {
        "_id": batch_id, "experimentId": experiment["_id"], "username": experiment["username"],
        "registrationTime": now, "state": "registered", "batchesListIndex": index,
        "protectedKeysVoided": False, "notificationsSent": False, "node": None, "attempts": 0,
        "history": [{"state": "registered", "time": now, "debugInfo": None, "node": None, "ccagent": None}],
        "inputs": inputs, "outputs": outputs, "usedGPUs": None, "mount": False, **extra,
    }


LOG_CAP_ENV = "FAICE_AGENCY_LOG_CAP"
DEFAULT_LOG_CAP = 4 * 1024 * 1024  # bytes kept per stream (stdout, stderr) of a batch


def log_cap_from(value: int | str | None) -> int:
    """The per-stream log cap in bytes: ``value``, else ``$FAICE_AGENCY_LOG_CAP``, else 4 MiB."""
    source = "--max-log-bytes" if value is not None else LOG_CAP_ENV
    if value is None:
        value = os.environ.get(LOG_CAP_ENV) or DEFAULT_LOG_CAP
    try:
        cap = int(value)
    except ValueError:
        cap = 0
    if cap <= 0:
        raise UsageError(f"{source}: expected a positive number of bytes, not {value!r}")
    return cap


def cap_log(text: str, cap: int, skipped: int = 0) -> str:
    """The last ``cap`` bytes (UTF-8) of a batch's output, marked at the start when cut;
    ``skipped`` bytes before ``text`` were never read (see ``runner.read_tail``).

    A batch may print without end; the database keeps only the tail, where errors are.
    Cut only redacted text: a secret cut in half would no longer be recognised.
    """
    data = text.encode("utf-8", "replace")
    if len(data) <= cap:
        return f"[… {skipped} bytes truncated …]\n" + text if skipped else text
    start = len(data) - cap
    while start < len(data) and data[start] & 0xC0 == 0x80:  # start on a whole character
        start += 1
    return f"[… {skipped + start} bytes truncated …]\n" + data[start:].decode("utf-8", "replace")


_BATCH_KEYS = {"_id", "experimentId", "username", "registrationTime", "state", "node", "batchesListIndex", "attempts", "notificationsSent"}


IDEMPOTENCY_SECONDS = 86400  # how long a client's Idempotency-Key is remembered
_IDEMPOTENCY_TABLE = """CREATE TABLE IF NOT EXISTS idempotency_keys (
    username TEXT NOT NULL,
    key TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    experiment_id TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (username, key))"""


class Store:
    def __init__(self, db: Database, *, log_cap: int | None = None):
        self.db = db
        self.log_cap = log_cap_from(log_cap)
        self.db.execute(_IDEMPOTENCY_TABLE)

    # ------------------------------------------------------------ writes
    def insert_experiment(
        self,
        experiment: dict[str, Any],
        batches: list[dict[str, Any]],
        *,
        user: str | None = None,
        idempotency: tuple[str, str] | None = None,
    ) -> str:
        """Store the experiment and its batches; the stored experiment's id. With an
        ``idempotency`` (key, body hash) already used by ``user``, nothing is stored and the
        first experiment's id is returned (one transaction: concurrent repeats store one)."""
        with self.db.transaction():
            if idempotency is not None:
                self.db.execute("DELETE FROM idempotency_keys WHERE created < ?", (time.time() - IDEMPOTENCY_SECONDS,))
                row = self.db.query_one(
                    "SELECT experiment_id FROM idempotency_keys WHERE username = ? AND key = ?", (user, idempotency[0])
                )
                if row is not None:
                    return row[0]
                self.db.execute(
                    "INSERT INTO idempotency_keys (username, key, body_hash, experiment_id, created) VALUES (?, ?, ?, ?, ?)",
                    (user, idempotency[0], idempotency[1], experiment["_id"], time.time()),
                )
            rest = {k: v for k, v in experiment.items() if k not in {"_id", "username", "registrationTime"}}
            self.db.execute(
                f"INSERT INTO experiments ({_EXPERIMENT_COLUMNS}) VALUES (?, ?, ?, ?)",
                (experiment["_id"], experiment["username"], experiment["registrationTime"], json.dumps(rest)),
            )
            self._insert_batches(batches)
        return experiment["_id"]

    def add_batches(self, batches: list[dict[str, Any]]) -> None:
        """Store batches of a stored experiment (a search's trials are added while it runs)."""
        with self.db.transaction():
            self._insert_batches(batches)

    def _insert_batches(self, batches: list[dict[str, Any]]) -> None:
        for batch in batches:
            self.db.execute(
                f"INSERT INTO batches ({_BATCH_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    batch["_id"], batch["experimentId"], batch["username"], batch["registrationTime"],
                    batch["state"], batch["node"], batch["batchesListIndex"], batch["attempts"], 0,
                    json.dumps({k: v for k, v in batch.items() if k not in _BATCH_KEYS}),
                ),
            )

    def update_experiment(self, experiment_id: str, **fields: Any) -> None:
        """Set fields of an experiment's document (a search's progress)."""
        with self.db.transaction():
            row = self.db.query_one("SELECT doc FROM experiments WHERE id = ?", (experiment_id,))
            if row is not None:
                doc = json.loads(row[0])
                doc.update(fields)
                self.db.execute("UPDATE experiments SET doc = ? WHERE id = ?", (json.dumps(doc), experiment_id))

    def idempotent(self, user: str, key: str) -> tuple[str, str] | None:
        """(experiment id, body hash) stored for ``user``'s Idempotency-Key, if any."""
        row = self.db.query_one(
            "SELECT experiment_id, body_hash, created FROM idempotency_keys WHERE username = ? AND key = ?", (user, key)
        )
        if row is None or row[2] < time.time() - IDEMPOTENCY_SECONDS:
            return None
        return row[0], row[1]

    def transition(
        self,
        batch_id: str,
        state: str,
        *,
        expect: frozenset[str] | set[str] | None = None,
        debug_info: str | None = None,
        ccagent: Any = None,
        node: str | None = None,
        count_attempt: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Move a batch to ``state`` if its current state is in ``expect``; the new document or None."""
        with self.db.transaction():
            row = self.db.query_one(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ?", (batch_id,))
            if row is None or (expect is not None and row[4] not in expect):
                return None
            batch = _batch(row)
            batch["history"].append(
                {"state": state, "time": time.time(), "debugInfo": debug_info, "node": node, "ccagent": ccagent}
            )
            batch.update(extra or {})
            attempts = batch["attempts"] + (1 if count_attempt else 0)
            self.db.execute(
                "UPDATE batches SET state = ?, node = ?, attempts = ?, doc = ? WHERE id = ?",
                (state, node, attempts, json.dumps({k: v for k, v in batch.items() if k not in _BATCH_KEYS}), batch_id),
            )
        batch.update(state=state, node=node, attempts=attempts)
        return batch

    def save_log(self, batch_id: str, name: str, content: str, *, skipped: int = 0) -> None:
        """Store a stream's (redacted) text, capped to its last :attr:`log_cap` bytes."""
        content = cap_log(content, self.log_cap, skipped)
        self.db.execute(
            "INSERT INTO batch_logs (batch_id, name, content) VALUES (?, ?, ?) "
            "ON CONFLICT (batch_id, name) DO UPDATE SET content = excluded.content",
            (batch_id, name, content),
        )

    def set_voided(self, batch_id: str) -> None:
        """Record that the batch's secrets were deleted (``protectedKeysVoided``)."""
        with self.db.transaction():
            row = self.db.query_one("SELECT doc FROM batches WHERE id = ?", (batch_id,))
            if row is not None:
                doc = json.loads(row[0])
                if not doc.get("protectedKeysVoided"):
                    doc["protectedKeysVoided"] = True
                    self.db.execute("UPDATE batches SET doc = ? WHERE id = ?", (json.dumps(doc), batch_id))

    def update_batch(self, batch_id: str, **fields: Any) -> None:
        """Set document fields of a batch (not its state: :meth:`transition`)."""
        assert not set(fields) & _BATCH_KEYS
        with self.db.transaction():
            row = self.db.query_one("SELECT doc FROM batches WHERE id = ?", (batch_id,))
            if row is not None:
                doc = json.loads(row[0])
                doc.update(fields)
                self.db.execute("UPDATE batches SET doc = ? WHERE id = ?", (json.dumps(doc), batch_id))

    def mark_notified(self, batch_ids: list[str]) -> None:
        for batch_id in batch_ids:
            self.db.execute("UPDATE batches SET notifications_sent = 1 WHERE id = ?", (batch_id,))

    # ------------------------------------------------------------ reads
    def experiment(self, experiment_id: str) -> dict[str, Any] | None:
        row = self.db.query_one(f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments WHERE id = ?", (experiment_id,))
        return _experiment(row) if row else None

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        row = self.db.query_one(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ?", (batch_id,))
        return _batch(row) if row else None

    def log(self, batch_id: str, name: str) -> str | None:
        row = self.db.query_one("SELECT content FROM batch_logs WHERE batch_id = ? AND name = ?", (batch_id, name))
        return row[0] if row else None

    def batches_in(self, states: set[str] | frozenset[str], *, limit: int | None = None) -> list[dict[str, Any]]:
        marks = ", ".join("?" for _ in states)
        sql = f"SELECT {_BATCH_COLUMNS} FROM batches WHERE state IN ({marks}) ORDER BY registration_time, list_index"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [_batch(r) for r in self.db.query(sql, tuple(sorted(states)))]

    def waiting_experiments(self) -> list[tuple[str, str]]:
        """(experiment id, user) of every experiment with registered batches, the one waiting
        longest first: one row per experiment, however many batches wait."""
        rows = self.db.query(
            "SELECT experiment_id, username, MIN(registration_time) AS since FROM batches WHERE state = ? "
            "GROUP BY experiment_id, username ORDER BY since, experiment_id", ("registered",))
        return [(r[0], r[1]) for r in rows]

    def registered_batches(self, experiment_id: str, *, limit: int) -> list[dict[str, Any]]:
        """The first ``limit`` registered batches of one experiment, in batch order."""
        rows = self.db.query(
            f"SELECT {_BATCH_COLUMNS} FROM batches WHERE experiment_id = ? AND state = ? "
            f"ORDER BY registration_time, list_index LIMIT {int(limit)}", (experiment_id, "registered"))
        return [_batch(r) for r in rows]

    def unnotified_final(self) -> list[dict[str, Any]]:
        marks = ", ".join("?" for _ in FINAL_STATES)
        rows = self.db.query(
            f"SELECT {_BATCH_COLUMNS} FROM batches WHERE notifications_sent = 0 AND state IN ({marks}) "
            "ORDER BY registration_time, list_index",
            tuple(sorted(FINAL_STATES)),
        )
        return [_batch(r) for r in rows]

    def has_unfinished(self, experiment_id: str) -> bool:
        """Whether a batch of the experiment is not final yet (stops at the first one)."""
        final = ", ".join("?" * len(FINAL_STATES))
        rows = self.db.query(f"SELECT 1 FROM batches WHERE experiment_id = ? AND state NOT IN ({final}) LIMIT 1",
                             (experiment_id, *sorted(FINAL_STATES)))
        return bool(rows)

    def experiment_batch_states(self, experiment_id: str) -> list[str]:
        return [r[0] for r in self.db.query("SELECT state FROM batches WHERE experiment_id = ?", (experiment_id,))]

    # ------------------------------------------------------------ listings
    @staticmethod
    def _where(filters: dict[str, Any]) -> tuple[str, list[Any]]:
        columns = {"username": "username", "experimentId": "experiment_id", "state": "state", "node": "node"}
        clauses, params = [], []
        for key, value in filters.items():
            if value is not None:
                clauses.append(f"{columns[key]} = ?")
                params.append(value)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def list(self, table: str, filters: dict[str, Any], *, skip: int = 0, limit: int | None = None, ascending: bool = False) -> list[dict[str, Any]]:
        where, params = self._where(filters)
        columns = _BATCH_COLUMNS if table == "batches" else _EXPERIMENT_COLUMNS
        order = "ASC" if ascending else "DESC"
        # Batches of one experiment share its registration time: like upstream, they follow
        # the RED's batch order in both directions (upstream's tests take the first as batch 0).
        by = f"registration_time {order}, experiment_id {order}, list_index" if table == "batches" else f"registration_time {order}, id {order}"
        sql = f"SELECT {columns} FROM {table}{where} ORDER BY {by}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        if skip:
            sql += f" OFFSET {int(skip)}" if limit is not None else f" LIMIT -1 OFFSET {int(skip)}" if self.db.dialect == "sqlite" else f" OFFSET {int(skip)}"
        rows = self.db.query(sql, params)
        return [_batch(r) if table == "batches" else _experiment(r) for r in rows]

    def count(self, table: str, filters: dict[str, Any]) -> int:
        where, params = self._where(filters)
        row = self.db.query_one(f"SELECT COUNT(*) FROM {table}{where}", params)
        return int(row[0]) if row else 0
