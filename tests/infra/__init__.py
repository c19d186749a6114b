"""Where the test services are: read from ``FAICE_TEST_*`` variables or from the env.json
that ``scripts/infra.sh up`` writes (``${FAICE_INFRA_DIR:-/tmp/faice-infra}/env.json``).

``scripts/test.sh`` brings the services up and exports the variables; running pytest by
hand after ``scripts/infra.sh up`` works too, through the env.json fallback.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

PREFIX = "FAICE_TEST_"
TEST_LABEL = "org.faice.test"
SESSION_LABEL = "org.faice.test.session"
SESSION = uuid.uuid4().hex[:12]  # this pytest process


def container_labels(**extra: str) -> dict[str, str]:
    """Labels for a container a test creates: the session finalizer removes it for sure."""
    return {TEST_LABEL: "1", SESSION_LABEL: SESSION, **extra}


def state_dir() -> Path:
    return Path(os.environ.get("FAICE_INFRA_DIR") or "/tmp/faice-infra")


class Infra(Mapping[str, str]):
    """The values of the ``FAICE_TEST_*`` variables, keyed without the prefix.

    ``infra["SSH_PORT"]`` is the string; ``infra.ssh_port`` is the same value, with
    ``*_PORT`` values as int and ``FAICE_TEST_SLURM`` as bool.
    """

    def __init__(self, values: Mapping[str, str], source: str) -> None:
        self._values = dict(values)
        self.source = source

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str):
        key = name.upper()
        if name.startswith("_") or key not in self._values:
            raise AttributeError(f"no test infrastructure value {PREFIX}{key} (known: {', '.join(self._values)})")
        value = self._values[key]
        if key.endswith("_PORT"):
            return int(value)
        if key == "SLURM":
            return value == "1"
        return value

    def env(self) -> dict[str, str]:
        """The values as environment variables (for subprocesses)."""
        return {PREFIX + k: v for k, v in self._values.items()}

    def __repr__(self) -> str:
        return f"Infra(source={self.source!r}, keys={sorted(self._values)})"


def load() -> Infra | None:
    """The infrastructure description, or None when none is set up.

    Variables in the environment win over env.json; None when neither names the SSH host.
    """
    values: dict[str, str] = {}
    source = "environment"
    env_json = state_dir() / "env.json"
    try:
        data = json.loads(env_json.read_text())
    except (OSError, ValueError):
        data = {}
    for key, value in data.items():
        if key.startswith(PREFIX):
            values[key[len(PREFIX):]] = str(value)
            source = str(env_json)
    for key, value in os.environ.items():
        if key.startswith(PREFIX) and key != PREFIX + "INFRA":
            values[key[len(PREFIX):]] = value
    if "SSH_HOST" not in values:
        return None
    return Infra(values, source)


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """A TCP connect probe (never HTTP: the auth-enforcing moto counts requests)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class SshServer:
    host: str
    port: int
    user: str  # password login
    password: str
    home: Path  # `user`'s home on this host; data/ inside it is writable
    key_user: str  # key-only login
    key_home: Path
    key_ed25519: Path
    key_rsa: Path  # PEM ("BEGIN RSA PRIVATE KEY")
    key_ed25519_enc: Path  # the ed25519 key protected with `key_passphrase`
    key_passphrase: str
    known_hosts: Path  # has [127.0.0.1]:PORT and [localhost]:PORT
    host_key_pub: Path


@dataclass(frozen=True)
class HttpServer:
    url: str  # http://127.0.0.1:8088 ; GET open, PUT/DELETE/MKCOL need basic auth
    https_url: str  # same tree over TLS, cert signed by `ca`
    json_url: str  # autoindex as JSON: GET {json_url}/some/dir/
    user: str
    password: str
    root: Path  # the served tree on this host
    ca: Path


@dataclass(frozen=True)
class S3Server:
    url: str  # moto, credentials not checked
    region: str
    auth_url: str  # moto enforcing IAM auth: only auth_key_id/auth_secret work
    auth_key_id: str
    auth_secret: str

    def client(self, auth: bool = False, **kwargs):
        """A boto3 S3 client (path-style) for the open server, or for the auth one."""
        import boto3
        from botocore.config import Config

        params = {
            "endpoint_url": self.auth_url if auth else self.url,
            "region_name": self.region,
            "aws_access_key_id": self.auth_key_id if auth else "testing",
            "aws_secret_access_key": self.auth_secret if auth else "testing",
            "config": Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 2}),
        }
        params.update(kwargs)
        return boto3.client("s3", **params)


@dataclass(frozen=True)
class Slurm:
    partition: str


def ssh_server(infra: Infra) -> SshServer:
    return SshServer(
        host=infra.ssh_host, port=infra.ssh_port, user=infra.ssh_user, password=infra.ssh_password,
        home=Path(infra.ssh_home_password_user), key_user=infra.ssh_key_user,
        key_home=Path(infra.ssh_home_key_user), key_ed25519=Path(infra.ssh_key_ed25519),
        key_rsa=Path(infra.ssh_key_rsa), key_ed25519_enc=Path(infra.ssh_key_ed25519_enc),
        key_passphrase=infra.ssh_key_passphrase, known_hosts=Path(infra.ssh_known_hosts),
        host_key_pub=Path(infra.ssh_host_key_pub),
    )


def http_server(infra: Infra) -> HttpServer:
    return HttpServer(
        url=infra.http_url, https_url=infra.https_url, json_url=infra.http_json_url,
        user=infra.http_user, password=infra.http_password, root=Path(infra.http_root),
        ca=Path(infra.https_ca),
    )


def s3_server(infra: Infra) -> S3Server:
    return S3Server(
        url=infra.s3_url, region=infra.s3_region, auth_url=infra.s3_auth_url,
        auth_key_id=infra.s3_auth_key_id, auth_secret=infra.s3_auth_secret,
    )
