"""A small real HTTP server for connector tests: Digest auth (RFC 7616, MD5, qop=auth) and
uploads by PUT and POST, things the test nginx does not do.

Files live under ``root``: ``GET /files/<path>`` reads one, ``PUT``/``POST /files/<path>``
stores the raw request body, ``OPTIONS`` answers which methods are allowed. Every request
under ``/files/`` needs Digest auth; a wrong or missing one gets 401 with a fresh challenge
(the body, if any, is read and discarded first, as nginx does). Every request is recorded in
``requests`` (method, path, Authorization header, body size) so a test can count them.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path

REALM = "faice-tests"


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


@dataclass
class Seen:
    method: str
    path: str
    authorization: str
    body_size: int


@dataclass
class DigestServer:
    root: Path
    username: str
    password: str
    requests: list[Seen] = field(default_factory=list)
    _nonces: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------ auth
    def _challenge(self):
        from werkzeug.datastructures import WWWAuthenticate
        from werkzeug.wrappers import Response

        nonce = secrets.token_hex(16)
        with self._lock:
            self._nonces.add(nonce)
        challenge = WWWAuthenticate("digest", {"realm": REALM, "nonce": nonce, "qop": "auth",
                                               "algorithm": "MD5", "opaque": secrets.token_hex(8)})
        return Response("authentication required\n", status=401, headers={"WWW-Authenticate": challenge.to_header()})

    def _authorized(self, request) -> bool:
        auth = request.authorization
        if auth is None or auth.type != "digest" or auth.username != self.username:
            return False
        with self._lock:
            known = auth.nonce in self._nonces
        if not known or auth.realm != REALM or auth.qop != "auth" or not auth.nc or not auth.cnonce:
            return False
        if auth.uri != request.environ.get("RAW_URI", request.full_path.rstrip("?")):
            return False
        ha1 = _md5(f"{self.username}:{REALM}:{self.password}")
        ha2 = _md5(f"{request.method}:{auth.uri}")
        expected = _md5(f"{ha1}:{auth.nonce}:{auth.nc}:{auth.cnonce}:{auth.qop}:{ha2}")
        return secrets.compare_digest(expected, auth.response or "")

    # ------------------------------------------------------------ WSGI
    def __call__(self, environ, start_response):
        from werkzeug.wrappers import Request, Response

        request = Request(environ)
        body = request.get_data() if request.method in ("PUT", "POST") else b""
        self.requests.append(Seen(request.method, request.path, request.headers.get("Authorization", ""), len(body)))
        if not request.path.startswith("/files/"):
            response = Response("not found\n", status=404)
        elif not self._authorized(request):
            response = self._challenge()
        else:
            response = self._serve(request, body)
        return response(environ, start_response)

    def _serve(self, request, body: bytes):
        from werkzeug.wrappers import Response

        rel = request.path[len("/files/"):]
        target = (self.root / rel).resolve()
        if not target.is_relative_to(self.root.resolve()) or not rel:
            return Response("forbidden\n", status=403)
        if request.method == "OPTIONS":
            return Response("", status=204, headers={"Allow": "GET, PUT, POST, OPTIONS"})
        if request.method in ("PUT", "POST"):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
            return Response("stored\n", status=201)
        if request.method in ("GET", "HEAD"):
            if not target.is_file():
                return Response("not found\n", status=404)
            return Response(target.read_bytes(), mimetype="application/octet-stream")
        return Response("method not allowed\n", status=405)

    def calls(self, method: str, path: str) -> list[Seen]:
        return [seen for seen in self.requests if seen.method == method and seen.path == path]


class Running:
    """``with Running(app) as url``: the app on 127.0.0.1 with a free port, in a thread."""

    def __init__(self, app) -> None:
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return self.url

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
