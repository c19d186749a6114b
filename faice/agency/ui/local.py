"""``faice ui``'s server: the pages over run directories, for the person who started it.

On a loopback address nobody else's browser can reach it, but any web page open in the same
browser could, through a name that resolves to 127.0.0.1 (DNS rebinding): only requests for
this server's own host names are answered. Bound anywhere else, every request needs the
access token printed at start (once in the URL; the browser then keeps it in a cookie that
no script and no other site can read).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from pathlib import Path
from typing import Any

from werkzeug.wrappers import Request, Response

from faice.agency.ui.rundirs import DirSource
from faice.agency.ui.web import UI, secure
from faice.errors import UsageError

TOKEN_COOKIE = "faice_ui_token"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class LocalUI:
    """WSGI app: host check, token check, then the pages."""

    def __init__(self, roots: list[Path], *, host: str, port: int, token: str | None = None):
        self.source = DirSource(roots, watch=True)
        self.ui = UI(self.source)
        self.token = token
        self.hosts: set[str] | None = None
        if token is None:
            names = {host, "localhost", "127.0.0.1", "[::1]"} if is_loopback(host) else {host}
            self.hosts = {f"{n}:{port}" for n in names} | ({n for n in names} if port == 80 else set())

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        return self.answer(request)(environ, start_response)

    def answer(self, request: Request) -> Response:
        if self.hosts is not None and request.host.lower() not in self.hosts:
            return secure(Response("This server answers only for its own address.", status=421, mimetype="text/plain"))
        if self.token is not None:
            given = request.args.get("token")
            if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
                response = secure(Response("", status=303))
                response.headers["Location"] = request.path
                response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="Strict", path="/")
                return response
            cookie = request.cookies.get(TOKEN_COOKIE, "")
            bearer = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not any(hmac.compare_digest(c.encode(), self.token.encode()) for c in (cookie, bearer) if c):
                return secure(Response("An access token is needed: open the URL faice ui printed.", status=401,
                                       mimetype="text/plain"))
        return self.ui.handle(request, request.path)


def new_token() -> str:
    return secrets.token_urlsafe(24)


def serve(roots: list[Path], *, host: str, port: int, announce: Any = print) -> int:
    """Serve until interrupted; the URL (with the token when one is needed) is announced."""
    from waitress.server import create_server

    token = None if is_loopback(host) else new_token()
    app = LocalUI(roots, host=host, port=port, token=token)
    try:
        server = create_server(app, host=host, port=port, threads=8, ident="faice-ui")
    except OSError as exc:
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})",
                         hint="choose another --port (--port 0: any free one)") from None
    bound = server.effective_port  # type: ignore[union-attr]
    if bound != port:  # --port 0: the port the system chose
        app.hosts = None if app.hosts is None else {h.rsplit(":", 1)[0] + f":{bound}" for h in app.hosts}
    shown = f"[{host}]" if ":" in host else host
    announce(f"faice ui: http://{shown}:{bound}/" + (f"?token={token}" if token else ""))
    import threading

    threading.Thread(target=app.source.warm, name="faice-ui-warm", daemon=True).start()
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
