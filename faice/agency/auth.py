"""Users, password hashing, lockout after repeated failures, and signed bearer tokens.

Passwords are hashed with scrypt and a per-user salt and compared in constant time. A
successful Basic login is remembered for a minute (keyed by an HMAC of the password with a
per-process key), so that clients polling with Basic auth do not pay a scrypt per request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
import time
from dataclasses import dataclass

from faice.agency.db import Database
from faice.errors import FaiceError

SCRYPT = {"n": 2**14, "r": 8, "p": 1}
CACHE_SECONDS = 60.0
ACCESS_TOKEN_SECONDS = 900
REFRESH_TOKEN_SECONDS = 43200


class AuthError(FaiceError):
    """401: the message is safe to show to the client."""


@dataclass(frozen=True)
class User:
    name: str
    is_admin: bool


@dataclass
class LockoutPolicy:
    max_failures: int = 5  # failures tolerated within `window`; one more blocks the user
    window: float = 60.0  # seconds; also how long a blocked user stays blocked


def hash_password(password: str, salt: bytes | None = None) -> tuple[str, str]:
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **SCRYPT)
    return f"scrypt${SCRYPT['n']}${SCRYPT['r']}${SCRYPT['p']}${digest.hex()}", salt.hex()


def check_password(password: str, stored: str, salt_hex: str) -> bool:
    try:
        _, n, r, p, digest_hex = stored.split("$")
        digest = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt_hex), n=int(n), r=int(r), p=int(p), dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest.hex(), digest_hex)


def add_user(db: Database, name: str, password: str, *, admin: bool) -> None:
    """Create the user or replace its password (and admin flag); clears any lockout."""
    stored, salt = hash_password(password)
    db.execute(
        "INSERT INTO users (username, password_hash, salt, is_admin, failed_count) VALUES (?, ?, ?, ?, 0) "
        "ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash, salt = excluded.salt, "
        "is_admin = excluded.is_admin, failed_count = 0, first_failure = NULL, blocked_until = NULL",
        (name, stored, salt, 1 if admin else 0),
    )


class Authenticator:
    """Checks Basic credentials (with lockout) and bearer tokens for one server."""

    def __init__(self, db: Database, signing_key: bytes, policy: LockoutPolicy | None = None):
        self.db = db
        self.policy = policy or LockoutPolicy()
        self._signing_key = signing_key
        self._cache_key = os.urandom(32)
        self._cache: dict[str, tuple[float, User]] = {}
        self._lock = threading.Lock()
        self._dummy = hash_password("dummy")

    # ------------------------------------------------------------ basic
    def basic(self, name: str, password: str) -> User:
        now = time.time()
        row = self.db.query_one(
            "SELECT password_hash, salt, is_admin, failed_count, first_failure, blocked_until FROM users WHERE username = ?",
            (name,),
        )
        if row is not None and row[5] is not None and row[5] > now:
            raise AuthError(f"User {name} is currently blocked due to invalid login attempts.")
        cache_key = hmac.new(self._cache_key, f"{name}\0{password}".encode(), "sha256").hexdigest()
        with self._lock:
            cached = self._cache.get(cache_key)
        if row is not None and cached and cached[0] > now:
            return cached[1]
        if row is None:
            check_password(password, *self._dummy)  # same time as a real check
            raise AuthError("Invalid username or password.")
        if not check_password(password, row[0], row[1]):
            self._record_failure(name, row[3], row[4], now)
            raise AuthError("Invalid username or password.")
        if row[3]:
            self.db.execute(
                "UPDATE users SET failed_count = 0, first_failure = NULL, blocked_until = NULL WHERE username = ?",
                (name,),
            )
        user = User(name, bool(row[2]))
        with self._lock:
            self._cache[cache_key] = (now + CACHE_SECONDS, user)
        return user

    def _record_failure(self, name: str, count: int, first: float | None, now: float) -> None:
        if first is None or now - first > self.policy.window:
            count, first = 0, now
        count += 1
        blocked = now + self.policy.window if count > self.policy.max_failures else None
        self.db.execute(
            "UPDATE users SET failed_count = ?, first_failure = ?, blocked_until = ? WHERE username = ?",
            (count, first, blocked, name),
        )
        if blocked:
            with self._lock:
                self._cache = {k: v for k, v in self._cache.items() if v[1].name != name}

    # ------------------------------------------------------------ tokens
    def issue(self, user: User, kind: str = "access") -> str:
        lifetime = ACCESS_TOKEN_SECONDS if kind == "access" else REFRESH_TOKEN_SECONDS
        payload = json.dumps({"u": user.name, "a": user.is_admin, "k": kind, "e": int(time.time() + lifetime)})
        body = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
        signature = hmac.new(self._signing_key, body.encode(), "sha256").hexdigest()
        return f"{body}.{signature}"

    def bearer(self, token: str, kind: str = "access") -> User:
        body, _, signature = token.partition(".")
        expected = hmac.new(self._signing_key, body.encode(), "sha256").hexdigest()
        if not signature or not hmac.compare_digest(signature, expected):
            raise AuthError("Invalid token.")
        try:
            payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            raise AuthError("Invalid token.") from None
        if payload.get("k") != kind or payload.get("e", 0) < time.time():
            raise AuthError("Token expired or of the wrong kind.")
        row = self.db.query_one("SELECT is_admin FROM users WHERE username = ?", (payload["u"],))
        if row is None:
            raise AuthError("Invalid token.")
        return User(payload["u"], bool(row[0]))
