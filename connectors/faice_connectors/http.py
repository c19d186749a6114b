"""``http`` (also ``red-connector-http``, ``red-connector-http-archive``): HTTP(S) transfers.

Access keys follow the upstream red-connector-http schemas: ``url``, ``method``, ``auth``
{``username``, ``password``, ``method`` basic|digest}, ``disableSSLVerification`` and, for
archives, ``archiveFormat``. Downloads stream in large chunks (4 KiB chunks halve Python's
throughput); a directory is received from a listing (``url/relative/path``) or unpacked
from an archive. Uploads stream the file as the request body (PUT/POST). Only ``auth``
identifies a request: never ``~/.netrc``, proxies from the environment, nor the access's
credentials after a redirect to another host.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from faice.connectors import (
    Connector,
    ConnectorFailure,
    Listing,
    Progress,
    TransientFailure,
    listed_files,
    safe_relative,
)
from faice.connectors.archives import FORMATS as ARCHIVE_FORMATS
from faice.connectors.archives import extract_archive
from faice.connectors.trees import output_tree
from faice_connectors._shared import strings_block

CHUNK = 4 * 1024 * 1024
CONNECT_TIMEOUT = 12.05
READ_TIMEOUT = 300.0
METHODS = [m for name in ("get", "put", "post") for m in (name, name.upper(), name.title())]
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}

_AUTH = strings_block(["username", "password"], method={"enum": ["basic", "Basic", "BASIC", "digest", "Digest", "DIGEST"]})


class HttpConnector(Connector):
    """GET/PUT/POST of files; directories from a listing or an archive; no mounts."""

    names = ("http", "red-connector-http", "red-connector-http-archive")
    access_schema = {
        "type": "object",
        "properties": {
            "url": {"type": "string", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://"},
            "method": {"enum": METHODS},
            "auth": _AUTH,
            "disableSSLVerification": {"type": "boolean"},
            "archiveFormat": {"enum": list(ARCHIVE_FORMATS)},
        },
        "required": ["url"],
        "additionalProperties": False,
    }

    def __init__(self, *, timeout: float | None = None) -> None:
        super().__init__(timeout=timeout)
        self._local = threading.local()  # requests.Session is not shared between threads

    # ---------------------------------------------------------------- plumbing

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            session = _own_credentials_session()
            self._local.session = session
            sessions = self.__dict__.setdefault("_sessions", [])
            sessions.append(session)
        return session

    def _timeouts(self) -> tuple[float, float]:
        return (self.timeout or CONNECT_TIMEOUT, self.timeout or READ_TIMEOUT)

    def _auth(self, access):
        """Basic credentials, or this thread's Digest state for them (it keeps the server's
        nonce, so later requests authenticate at once instead of after a 401)."""
        auth = access.get("auth")
        if not auth:
            return None
        credentials = (auth["username"], auth["password"])
        if str(auth.get("method", "basic")).lower() != "digest":
            return credentials
        digests = self._local.__dict__.setdefault("digests", {})
        if credentials not in digests:
            import requests

            digests[credentials] = requests.auth.HTTPDigestAuth(*credentials)
        return digests[credentials]

    def _request(self, access, method: str, url: str, **kwargs):
        """One request with the access's auth/TLS settings; HTTP errors become failures."""
        import requests

        kwargs["auth"] = self._auth(access)
        verify: bool | str = not access.get("disableSSLVerification", False)
        if verify:  # the host's CA bundle is trust, not identity: kept without trust_env
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        else:
            import urllib3

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        try:
            response = self._session().request(method, url, verify=verify, timeout=self._timeouts(), **kwargs)
        except requests.exceptions.SSLError as exc:
            raise ConnectorFailure(f"TLS error for {url}: {_reason(exc)}") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise TransientFailure(f"cannot reach {url}: {_reason(exc)}") from None
        if response.status_code >= 400:
            status = f"HTTP {response.status_code} {response.reason or ''}".strip()
            response.close()
            if response.status_code in (401, 403):
                raise ConnectorFailure(f"{method} {url}: {status} (check auth username/password)")
            if response.status_code == 404:
                raise ConnectorFailure(f"{method} {url}: {status}: the remote file does not exist")
            if response.status_code in TRANSIENT_STATUS:
                raise TransientFailure(f"{method} {url}: {status}")
            raise ConnectorFailure(f"{method} {url}: {status}")
        return response

    def _download(self, access, url: str, dest: Path, progress: Progress) -> None:
        import requests

        with self._request(access, "GET", url, stream=True) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and not response.headers.get("Content-Encoding"):
                progress.expect(int(length))
            received = 0
            try:
                with open(dest, "wb") as handle:
                    # read1: whatever has arrived (up to CHUNK), so a slow link still reaches
                    # progress.advance often enough to stop within a second of Ctrl-C.
                    while chunk := response.raw.read1(CHUNK, decode_content=True):
                        handle.write(chunk)
                        received += len(chunk)
                        progress.advance(len(chunk))
            except ConnectorFailure:  # cancelled: never a transient failure to retry
                raise
            except (requests.exceptions.RequestException, OSError) as exc:
                if isinstance(exc, OSError) and not _is_network_error(exc):
                    raise
                raise TransientFailure(f"GET {url}: transfer interrupted: {_reason(exc)}") from None
            except Exception as exc:  # urllib3 ProtocolError/ReadTimeoutError
                raise TransientFailure(f"GET {url}: transfer interrupted: {_reason(exc)}") from None
            if length and length.isdigit() and not response.headers.get("Content-Encoding") and received != int(length):
                raise TransientFailure(f"GET {url}: transfer interrupted after {received} of {length} bytes")

    def _upload(self, access, url: str, src: Path, progress: Progress) -> None:
        method = str(access.get("method", "POST")).upper()
        self._prime_digest(access, url)
        with open(src, "rb") as handle:
            body = _ProgressReader(handle, src.stat().st_size, progress)
            self._request(access, method, url, data=body).close()

    def _prime_digest(self, access, url: str) -> None:
        """Get a Digest nonce with a bodyless request before the first upload to a server.

        Digest answers the first request with a 401 challenge; without this, every file would
        cross the network twice (and wrong credentials are found before sending anything).
        """
        from urllib.parse import urlsplit

        auth = self._auth(access)
        if auth is None or isinstance(auth, tuple):
            return
        primed = self._local.__dict__.setdefault("primed", set())
        key = (id(auth), urlsplit(url)[:2])
        if key in primed:
            return
        self._probe_write(access, url)
        primed.add(key)

    def _probe_write(self, access, url: str) -> None:
        """Check credentials for a write without writing: servers that need auth for writes
        answer an unauthenticated or wrongly authenticated OPTIONS with 401/403."""
        try:
            self._request(access, "OPTIONS", url).close()
        except ConnectorFailure as exc:
            if "401" in str(exc) or "403" in str(exc) or isinstance(exc, TransientFailure):
                raise

    # ---------------------------------------------------------------- validation

    def validate(self, access, operation, listing=None):
        url = access["url"]
        if operation == "receive-file":
            self._request(access, "GET", url, stream=True).close()
        elif operation == "receive-dir":
            if access.get("archiveFormat"):
                self._request(access, "GET", url, stream=True).close()
            elif listing is None:
                raise ConnectorFailure(
                    "receiving a directory over http needs a listing (or archiveFormat for an archive)"
                )
            else:
                for rel, _item in listed_files(listing):
                    self._request(access, "GET", _join(url, rel), stream=True).close()
        elif operation in ("send-file", "send-dir"):
            self._probe_write(access, url)

    # ---------------------------------------------------------------- primitives

    def receive_file(self, access, dest: Path, progress: Progress) -> None:
        self._download(access, access["url"], dest, progress)

    def receive_dir(self, access, dest: Path, listing: Listing | None, progress: Progress) -> None:
        url = access["url"]
        archive_format = access.get("archiveFormat")
        if archive_format:
            archive = dest.parent / f".{dest.name}.archive"
            try:
                self._download(access, url, archive, progress)
                unpack_archive(archive, dest, archive_format)
            finally:
                archive.unlink(missing_ok=True)
            return
        if listing is None:
            raise ConnectorFailure("receiving a directory over http needs a listing (or archiveFormat)")
        for rel, _item in listed_files(listing):
            target = dest / safe_relative(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            self._download(access, _join(url, rel), target, progress)

    def send_file(self, access, src: Path, progress: Progress) -> None:
        self._upload(access, access["url"], src, progress)

    def send_dir(self, access, src: Path, listing: Listing | None, progress: Progress) -> None:
        for item in output_tree(src, listing).files:  # links out of the output are refused
            self._upload(access, _join(access["url"], item.rel), item.path, progress)

    def close(self) -> None:
        for session in self.__dict__.get("_sessions", []):
            session.close()


def _own_credentials_session():
    """A requests session that sends only the credentials of the RED file's ``auth``.

    ``trust_env`` off: no ``~/.netrc`` logins or proxies of the account running faice (on an
    agency, the server's); a CA bundle named by ``REQUESTS_CA_BUNDLE`` is still trusted. On a redirect to another host (or port) the access's
    credentials stay behind: requests drops the Authorization header, and here also the Digest
    handler that would answer the new host's challenge with them.
    """
    import requests

    class OwnCredentialsSession(requests.Session):
        def rebuild_auth(self, prepared_request, response) -> None:
            if self.should_strip_auth(response.request.url, prepared_request.url):
                prepared_request.headers.pop("Authorization", None)
                prepared_request.hooks = {"response": []}  # a copy shares the original's dict

    session = OwnCredentialsSession()
    session.trust_env = False
    return session


class _ProgressReader:
    """A file body for requests: known length (no chunked encoding), progress per read.

    Seekable, so that requests can send the body again after a Digest 401 challenge;
    progress counts each byte once, however often it is sent.
    """

    def __init__(self, handle, size: int, progress: Progress) -> None:
        self._handle = handle
        self._size = size
        self._progress = progress
        self._reported = 0

    def __len__(self) -> int:
        return self._size

    def read(self, amount: int = -1) -> bytes:
        data = self._handle.read(max(amount, CHUNK) if amount and amount > 0 else -1)
        position = self._handle.tell()
        if position > self._reported:
            self._progress.advance(position - self._reported)
            self._reported = position
        return data

    def tell(self) -> int:
        return self._handle.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._handle.seek(offset, whence)


def _join(url: str, rel: str) -> str:
    from urllib.parse import quote

    return url.rstrip("/") + "/" + quote(safe_relative(rel))


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests/urllib3 error, without the noisy wrappers."""
    while exc.__context__ is not None and exc.args and not isinstance(exc.args[0], str):
        exc = exc.__context__
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if "timed out" in text.lower():
        return "timed out"
    return text


def _is_network_error(exc: OSError) -> bool:
    import errno

    return exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ETIMEDOUT) or exc.errno is None


def unpack_archive(archive: Path, dest: Path, archive_format: str) -> None:
    """Unpack by faice's own member rules (:mod:`faice.connectors.archives`), never the
    interpreter's: no absolute paths, no ``..``, links only inside, no devices, size limits."""
    extract_archive(archive, dest, archive_format)
