"""Users, password hashing, lockout after repeated failures, and signed bearer tokens.

Passwords are hashed with scrypt and a per-user salt and compared in constant time. A
successful Basic login is remembered for a minute (keyed by an HMAC of the password with a
per-process key), so that clients polling with Basic auth do not pay a scrypt per request.

Lockout counts attempts per user name *and client address*: an attacker can block a name
only from their own address, never the real user elsewhere. Names that do not exist are
counted alike, and every failed login gets one answer after one scrypt, so neither the
answer nor its timing tells which names exist. Each attempt is reserved by one atomic
``INSERT … ON CONFLICT DO UPDATE … RETURNING`` before the password is checked, so parallel
guesses can never get more than ``max_failures`` checks per window. Tokens are itsdangerous
signatures carrying a stamp of the user's password hash: a new password revokes them all.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from dataclasses import dataclass
from typing import NoReturn

from faice.agency.db import Database
from faice.errors import FaiceError

SCRYPT = {"n": 2**14, "r": 8, "p": 1}
CACHE_SECONDS = 60.0
ACCESS_TOKEN_SECONDS = 900
REFRESH_TOKEN_SECONDS = 43200
MAX_NAME = 1000  # characters of a login name that may reach SQL
_FAILURES_TABLE = """CREATE TABLE IF NOT EXISTS login_failures (
    username TEXT NOT NULL,
    client TEXT NOT NULL,
    failures INTEGER NOT NULL,
    window_start DOUBLE PRECISION NOT NULL,
    blocked_until DOUBLE PRECISION,
    PRIMARY KEY (username, client))"""


# The one answer to every failed Basic login (unknown name, wrong password, blocked).
LOGIN_FAILED = ("Invalid username or password, or too many failed logins from this address "
                "(then wait a while before trying again).")


class AuthError(FaiceError):
    """401: the message is safe to show to the client."""


@dataclass(frozen=True)
class User:
    name: str
    is_admin: bool


@dataclass
class LockoutPolicy:
    max_failures: int = 5  # attempts per user and client address within `window`; one more blocks
    window: float = 60.0  # seconds; also how long a blocked user stays blocked at that address


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
    """Create the user or replace its password (and admin flag); clears any lockout. A new
    password changes the user's token stamp, so every token issued before stops working."""
    stored, salt = hash_password(password)
    db.execute(
        "INSERT INTO users (username, password_hash, salt, is_admin, failed_count) VALUES (?, ?, ?, ?, 0) "
        "ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash, salt = excluded.salt, "
        "is_admin = excluded.is_admin, failed_count = 0, first_failure = NULL, blocked_until = NULL",
        (name, stored, salt, 1 if admin else 0),
    )
    db.execute(_FAILURES_TABLE)
    db.execute("DELETE FROM login_failures WHERE username = ?", (name,))


class Authenticator:
    """Checks Basic credentials (with lockout) and bearer tokens for one server."""

    def __init__(self, db: Database, signing_key: bytes, policy: LockoutPolicy | None = None):
        self.db = db
        self.policy = policy or LockoutPolicy()
        self._signing_key = signing_key
        self._cache_key = os.urandom(32)
        self._cache: dict[str, tuple[float, User, str]] = {}
        self._lock = threading.Lock()
        self._dummy = hash_password("dummy")
        self._pruned = 0.0
        db.execute(_FAILURES_TABLE)

    # ------------------------------------------------------------ basic
    def basic(self, name: str, password: str, client: str = "") -> User:
        """The user of a right name and password. Every failed login — an unknown name, a
        wrong password, a name blocked at this address — gets the same answer after the same
        work (one scrypt), so answers never tell which names exist."""
        now = time.time()
        if "\0" in name or len(name) > MAX_NAME:  # no such user; PostgreSQL refuses NUL in text
            self._refuse(password)
        row = self.db.query_one("SELECT password_hash, salt, is_admin FROM users WHERE username = ?", (name,))
        blocked = self.db.query_one(
            "SELECT blocked_until FROM login_failures WHERE username = ? AND client = ?", (name, client)
        )
        if blocked is not None and blocked[0] is not None and blocked[0] > now:
            self._refuse(password)
        cache_key = hmac.new(self._cache_key, f"{name}\0{password}".encode(), "sha256").hexdigest()
        with self._lock:
            cached = self._cache.get(cache_key)
        if row is not None and cached and cached[0] > now and cached[2] == row[0]:  # password not changed since
            return cached[1]
        if not self._reserve_attempt(name, client, now):
            self._refuse(password)
        if row is None:
            self._refuse(password)  # the reserved attempt stays counted, as for a known name
        if not check_password(password, row[0], row[1]):
            raise AuthError(LOGIN_FAILED)  # the reserved attempt stays counted
        self.db.execute("DELETE FROM login_failures WHERE username = ? AND client = ?", (name, client))
        user = User(name, bool(row[2]))
        with self._lock:
            self._cache[cache_key] = (now + CACHE_SECONDS, user, row[0])
        return user

    def _refuse(self, password: str) -> NoReturn:
        check_password(password, *self._dummy)  # the time a real check takes
        raise AuthError(LOGIN_FAILED)

    def _reserve_attempt(self, name: str, client: str, now: float) -> bool:
        """Count one attempt atomically (one statement on SQLite and PostgreSQL alike); False
        when it is over the limit: then the password must not be checked."""
        cut = now - self.policy.window
        rows = self.db.query(
            "INSERT INTO login_failures (username, client, failures, window_start, blocked_until) "
            "VALUES (?, ?, 1, ?, NULL) ON CONFLICT (username, client) DO UPDATE SET "
            "failures = CASE WHEN login_failures.window_start < ? THEN 1 ELSE login_failures.failures + 1 END, "
            "window_start = CASE WHEN login_failures.window_start < ? THEN ? ELSE login_failures.window_start END "
            "RETURNING failures, blocked_until",
            (name, client, now, cut, cut, now),
        )
        failures, blocked_until = rows[0]
        if blocked_until is not None and blocked_until > now:
            return False
        if failures > self.policy.max_failures:
            self.db.execute(
                "UPDATE login_failures SET blocked_until = ? WHERE username = ? AND client = ?",
                (now + self.policy.window, name, client),
            )
            with self._lock:
                self._cache = {k: v for k, v in self._cache.items() if v[1].name != name}
            return False
        if now - self._pruned > self.policy.window:  # forget old failures now and then
            self._pruned = now
            self.db.execute(
                "DELETE FROM login_failures WHERE window_start < ? AND (blocked_until IS NULL OR blocked_until < ?)",
                (cut, now),
            )
        return True

    # ------------------------------------------------------------ tokens
    def _serializer(self, kind: str):
        from itsdangerous import URLSafeTimedSerializer

        return URLSafeTimedSerializer(self._signing_key, salt=f"faice-agency-{kind}-token")

    def _stamp(self, password_hash: str) -> str:
        return hmac.new(self._signing_key, password_hash.encode(), "sha256").hexdigest()[:16]

    def issue(self, user: User, kind: str = "access") -> str:
        row = self.db.query_one("SELECT password_hash FROM users WHERE username = ?", (user.name,))
        if row is None:
            raise AuthError("Invalid username or password.")
        return self._serializer(kind).dumps({"u": user.name, "s": self._stamp(row[0])})

    def bearer(self, token: str, kind: str = "access") -> User:
        from itsdangerous import BadSignature, SignatureExpired

        lifetime = ACCESS_TOKEN_SECONDS if kind == "access" else REFRESH_TOKEN_SECONDS
        try:
            payload = self._serializer(kind).loads(token, max_age=lifetime)
        except SignatureExpired:
            raise AuthError("Token expired.") from None
        except BadSignature:
            raise AuthError("Invalid token.") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("u"), str):
            raise AuthError("Invalid token.")
        row = self.db.query_one("SELECT is_admin, password_hash FROM users WHERE username = ?", (payload["u"],))
        if row is None or not hmac.compare_digest(str(payload.get("s")), self._stamp(row[1])):
            raise AuthError("Invalid token (revoked by a password change, or the user is gone).")
        return User(payload["u"], bool(row[0]))
