"""What an ``ssh`` access may say and how it logs in: schema, value patterns, credentials,
host-key policy and the one map from asyncssh's errors to connector failures.

Host keys live in the access's ``knownHostsFile``, by default faice's own file
(:attr:`HostIdentity.known_hosts`) and never the account's ``~/.ssh/known_hosts``: on an
agency no user decides a host's key for another through the server's account.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Any

from cryptography.utils import CryptographyDeprecationWarning

from faice.connectors import ConnectorFailure, TransientFailure
from faice_connectors._shared import strings_block

# asyncssh still names DSA (and old ciphers) in type hints and tables, which the cryptography
# it runs with deprecates: warnings at import that no user can act on. Ignored for asyncssh
# only; faice's own use of cryptography still warns.
warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning, module=r"asyncssh(\.|$)")

# What a value may contain where it reaches ssh, sshfs or an ssh config file: no option
# separators (comma, backslash), quotes, control characters or ssh config expansions.
HOST_PATTERN = r"^(?!-)[A-Za-z0-9._:%-]+$"
USERNAME_PATTERN = r"^(?!-)[A-Za-z0-9._@$+-]+$"
LOCAL_PATH_PATTERN = r"^[^\x00-\x1f\x7f,\\\"%$]+$"
CIPHER_PATTERN = r"^[A-Za-z0-9@.+_-]+$"
CIPHERS_PATTERN = r"^[A-Za-z0-9@.+_-]+(,[A-Za-z0-9@.+_-]+)*$"
REMOTE_PATH_PATTERN = r"^[^\x00]+$"

_USERNAME = {"type": "string", "minLength": 1, "pattern": USERNAME_PATTERN}
_AUTH = {"oneOf": [strings_block(["username", "password"], username=_USERNAME),
                   strings_block(["username", "privateKey"], ["passphrase"], username=_USERNAME)]}
_COMMON = {
    "host": {"type": "string", "minLength": 1, "pattern": HOST_PATTERN},
    "port": {"type": "integer", "minimum": 1, "maximum": 65535},
    "auth": _AUTH,
    "timeout": {"type": "number"},
    "authTimeout": {"type": "number"},
    "bannerTimeout": {"type": "number"},
    "hostKeyPolicy": {"enum": ["accept-new", "strict", "ignore"]},
    "knownHostsFile": {"type": "string", "minLength": 1, "pattern": LOCAL_PATH_PATTERN},
}


def schema(path_key: str, **extra: Any) -> dict:
    """The access schema of one operation; ``path_key`` is ``filePath`` or ``dirPath``."""
    return {
        "type": "object",
        "properties": {**_COMMON, path_key: {"type": "string", "minLength": 1, "pattern": REMOTE_PATH_PATTERN},
                       **extra},
        "required": ["host", "auth", path_key],
        "additionalProperties": False,
    }


MOUNT_EXTRA = {
    "writable": {"type": "boolean"},
    "ciphers": {"anyOf": [{"type": "string", "pattern": CIPHERS_PATTERN},
                          {"type": "array", "items": {"type": "string", "pattern": CIPHER_PATTERN}}]},
}


def check_access_values(access) -> None:
    """The schema's patterns again where values are used: a caller that skipped the schema
    check still cannot put an option into an ssh or sshfs command line."""
    checks = [("host", access.get("host"), HOST_PATTERN),
              ("auth.username", (access.get("auth") or {}).get("username"), USERNAME_PATTERN),
              ("knownHostsFile", access.get("knownHostsFile"), LOCAL_PATH_PATTERN)]
    ciphers = access.get("ciphers")
    if isinstance(ciphers, list):
        checks += [(f"ciphers[{i}]", c, CIPHER_PATTERN) for i, c in enumerate(ciphers)]
    else:
        checks.append(("ciphers", ciphers, CIPHERS_PATTERN))
    for key in ("filePath", "dirPath"):
        checks.append((key, access.get(key), REMOTE_PATH_PATTERN))
    for key, value, pattern in checks:
        if value is not None and (not isinstance(value, str) or re.fullmatch(pattern, value) is None):
            raise ConnectorFailure(f"access.{key}: {value!r} is not allowed here (it must match {pattern})")


def policy(access) -> str:
    return str(access.get("hostKeyPolicy", "accept-new"))


def known_hosts(access) -> Path:
    """The access's host-key file (the connector's entry points fill in the host's default)."""
    return Path(os.path.expanduser(str(access["knownHostsFile"])))


def port(access) -> int:
    return int(access.get("port", 22))


def account_key(access) -> tuple:
    """What makes two accesses one login: a session is shared only under all of it."""
    auth = access["auth"]
    return (access["host"], port(access), auth["username"], auth.get("password"), auth.get("privateKey"),
            auth.get("passphrase"), policy(access), str(known_hosts(access)), access.get("timeout"),
            access.get("authTimeout"))


def login_refused(access) -> str:
    """The one message for wrong credentials (the secret itself is never part of it)."""
    return f"ssh: login refused for {access['auth']['username']}@{access['host']}:{port(access)}"


def remote_path(path: str) -> str:
    """Upstream semantics: ``~/x`` and ``x`` are relative to the login's home directory."""
    if path == "~":
        return "."
    if path.startswith("~/"):
        path = path[2:]
    return path or "."


def key_text(text: str) -> str:
    """A private key as pasted, also as one line with ``\\n`` escapes, in its file form."""
    if "\\n" in text and "\n" not in text.strip():
        text = text.replace("\\n", "\n")
    return text.strip() + "\n"


_KEY_ALGORITHMS = (b"ssh-ed25519", b"ecdsa-sha2-", b"ssh-rsa")


def load_private_key(text: str, passphrase: str | None):
    """An ed25519, ECDSA or RSA key from its text (OpenSSH or PEM), decrypted if needed."""
    import asyncssh

    try:
        key = asyncssh.import_private_key(key_text(text), passphrase or None)
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError, ValueError) as exc:
        reason = str(exc).lower()
        if "passphrase must be specified" in reason:
            raise ConnectorFailure("auth.privateKey is encrypted: give auth.passphrase") from None
        if passphrase and ("passphrase" in reason or "decrypt" in reason):
            raise ConnectorFailure("auth.passphrase does not decrypt auth.privateKey") from None
        key = None
    if key is None or not key.algorithm.startswith(_KEY_ALGORITHMS):
        raise ConnectorFailure("auth.privateKey is not an ed25519, ECDSA or RSA private key "
                               "(or the passphrase is wrong)")
    return key


# -------------------------------------------------------------------- host keys


_RECORDING = threading.Lock()


def host_entry(host: str, port_number: int) -> str:
    """The known_hosts name of a host, as OpenSSH (and so sshfs) writes and reads it."""
    return host if port_number == 22 else f"[{host}]:{port_number}"


def load_known_hosts(access):
    """The access's host keys for asyncssh; None skips the check (``ignore``)."""
    import asyncssh

    if policy(access) == "ignore":
        return None
    path = known_hosts(access)
    try:
        text = path.read_text() if path.is_file() else ""
        return asyncssh.import_known_hosts(text)
    except (OSError, ValueError, asyncssh.KeyImportError) as exc:
        raise ConnectorFailure(f"cannot read knownHostsFile {path}: {exc}") from None


def client_factory(access, known):
    """An asyncssh client that applies the access's host-key policy to a key not yet trusted:
    ``accept-new`` records the key of a host seen for the first time; a host whose recorded
    key differs is refused (and remembered as ``changed`` for the message)."""
    import asyncssh

    class HostKeyPolicy(asyncssh.SSHClient):
        changed = False

        def validate_host_public_key(self, host: str, addr: str, port_number: int, key) -> bool:
            trusted = known.match(host, addr, port_number)[0] if known is not None else ()
            if trusted:
                type(self).changed = True
                return False
            if policy(access) != "accept-new":
                return False
            record_host_key(known_hosts(access), host_entry(access["host"], port(access)), key)
            return True

    return HostKeyPolicy


def record_host_key(path: Path, entry: str, key) -> None:
    kind, data = key.export_public_key("openssh").decode().split()[:2]
    line = f"{entry} {kind} {data}\n"
    with _RECORDING:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as handle:
            handle.write(line)


def mapped(exc: BaseException, access, *, changed: bool = False) -> BaseException:
    """asyncssh and SFTP errors as connector failures; anything else unchanged."""
    import asyncssh

    if isinstance(exc, ConnectorFailure | TransientFailure):
        return exc
    host, port_number = access["host"], port(access)
    hosts = known_hosts(access) if policy(access) != "ignore" else None
    if isinstance(exc, asyncssh.PermissionDenied):
        return ConnectorFailure(login_refused(access))
    if changed and isinstance(exc, asyncssh.HostKeyNotVerifiable | asyncssh.KeyExchangeFailed):
        return ConnectorFailure(
            f"the host key of {host}:{port_number} has CHANGED: it does not match the key recorded in "
            f"{hosts}; refusing to connect (possible man-in-the-middle attack). If the server "
            f"was really re-keyed, remove its old entry from {hosts}")
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        if policy(access) == "strict":
            return ConnectorFailure(
                f"the host key of {host}:{port_number} is not in {hosts} and hostKeyPolicy is strict; "
                f"add it (ssh-keyscan -p {port_number} {host}) or use hostKeyPolicy accept-new")
        return ConnectorFailure(f"host key verification failed for {host}:{port_number} "
                                f"(hostKeyPolicy {policy(access)}, {hosts})")
    if isinstance(exc, asyncssh.SFTPNoSuchFile):
        return ConnectorFailure(f"remote path not found: {exc.reason}")
    if isinstance(exc, asyncssh.SFTPPermissionDenied):
        return ConnectorFailure(f"permission denied on the remote side: {exc.reason}")
    if isinstance(exc, asyncssh.SFTPError):
        return ConnectorFailure(f"SFTP error from {host}: {exc.reason}")
    if isinstance(exc, asyncssh.DisconnectError | asyncssh.ChannelOpenError | ConnectionError | EOFError):
        return TransientFailure(f"SFTP transfer with {host} interrupted: {exc}")
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return TransientFailure(f"cannot connect to {host}:{port_number}: timed out")
    if isinstance(exc, OSError) and exc.filename is None:
        reason = "connection refused" if "refused" in str(exc).lower() else (exc.strerror or str(exc))
        return TransientFailure(f"cannot connect to {host}:{port_number}: {reason}")
    return exc
