"""Secrets at rest: connector ``access`` and image ``auth`` objects, Fernet-encrypted.

Upstream kept them in a separate process's memory (lost on restart); here they are stored
encrypted in the database, with the key in a 0600 file beside it, and deleted as soon as the
batch that needs them is final. Documents refer to them by a random key
(``{"vaultKey": "<hex>"}`` — never the value).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import uuid
from typing import Any

from faice.agency.db import Database
from faice.errors import UsageError

REF_KEY = "vaultKey"


def load_or_create_key(path: str) -> bytes:
    from cryptography.fernet import Fernet

    if os.path.exists(path):
        mode = os.stat(path).st_mode & 0o777
        if mode & 0o077:
            raise UsageError(f"{path}: secret key file must not be readable by others (mode {mode:o}); chmod 600 {path}")
        with open(path, "rb") as handle:
            key = handle.read().strip()
        try:
            Fernet(key)
        except ValueError:
            raise UsageError(f"{path}: not a valid secret key file (expected a Fernet key)") from None
        return key
    key = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")
    return key


class Vault:
    def __init__(self, db: Database, key: bytes):
        from cryptography.fernet import Fernet

        self.db = db
        self._fernet = Fernet(key)
        self.signing_key = hmac.new(key, b"faice-agency-tokens", hashlib.sha256).digest()

    def put(self, owner: str, value: Any) -> dict[str, str]:
        """Store ``value`` for ``owner`` (a batch or experiment id); returns the reference."""
        key = uuid.uuid4().hex
        token = self._fernet.encrypt(json.dumps(value).encode()).decode()
        self.db.execute("INSERT INTO secrets (key, owner, token) VALUES (?, ?, ?)", (key, owner, token))
        return {REF_KEY: key}

    def get(self, ref: dict[str, str]) -> Any:
        row = self.db.query_one("SELECT token FROM secrets WHERE key = ?", (ref[REF_KEY],))
        if row is None:
            raise KeyError(ref[REF_KEY])
        return json.loads(self._fernet.decrypt(row[0].encode()))

    def delete_owner(self, owner: str) -> None:
        self.db.execute("DELETE FROM secrets WHERE owner = ?", (owner,))


def is_ref(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {REF_KEY}


def seal(vault: Vault, owner: str, data: Any) -> Any:
    """A copy of batch inputs/outputs with every connector ``access`` replaced by a reference."""
    shared: dict[str, dict[str, str]] = {}

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            result = {}
            for key, value in node.items():
                if key == "connector" and isinstance(value, dict) and "access" in value:
                    text = json.dumps(value["access"], sort_keys=True)
                    if text not in shared:
                        shared[text] = vault.put(owner, value["access"])
                    result[key] = {**value, "access": shared[text]}
                else:
                    result[key] = walk(value)
            return result
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(data)


def unseal(vault: Vault, data: Any) -> Any:
    """Replace every reference by its stored value (KeyError when one is gone)."""
    if is_ref(data):
        return vault.get(data)
    if isinstance(data, dict):
        return {k: unseal(vault, v) for k, v in data.items()}
    if isinstance(data, list):
        return [unseal(vault, v) for v in data]
    return data
