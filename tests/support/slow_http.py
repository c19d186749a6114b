"""A throttled HTTP server on 127.0.0.1 for interrupt tests: ``/small`` returns a short body
(it holds the test's secret, so a container that prints it shows whether logs are masked),
``/big`` streams ``size`` bytes at about ``rate`` bytes/s (a large download that takes long);
and a server that never answers (:class:`SilentServer`)."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class SlowServer:
    def __init__(self, small: bytes, *, size: int = 2 * 2**30, rate: int = 8 * 2**20) -> None:
        outer = self
        self.small, self.size, self.rate = small, size, rate
        self.big_requests = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.startswith("/small"):
                    self._send(outer.small)
                elif self.path.startswith("/big"):
                    outer.big_requests += 1
                    self._stream()
                else:
                    self.send_error(404)

            def _send(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(outer.size))
                self.end_headers()
                block = b"x" * 65536
                sent, started = 0, time.monotonic()
                try:
                    while sent < outer.size:
                        self.wfile.write(block)
                        sent += len(block)
                        ahead = sent / outer.rate - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                except OSError:
                    pass  # the client went away: what the tests want

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SlowServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts every connection and never answers (a stalled
    HTTP server): a client waits until its read timeout. ``connections`` counts accepts."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self._held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed by __exit__
                return
            self._held.append(conn)
            self.connections += 1

    def __enter__(self) -> SilentServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.sock.close()
        for conn in self._held:
            conn.close()
