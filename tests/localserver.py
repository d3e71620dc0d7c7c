"""What the local hub stand-ins share: a threaded HTTP server on 127.0.0.1 and the plumbing of its handler.

:class:`LocalServer` runs a handler class on a free port in a daemon thread (use it as a context manager),
keeps the request log and the committed files of each repo; :class:`JsonHandler` reads bodies (plain or
chunked) and answers JSON. ``hubserver.HubServer`` (Hugging Face) and ``msserver.MsServer`` (ModelScope) add
their own routes.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class LocalServer:
    """A server on 127.0.0.1 (a free port) that accepts ``token``; ``handler`` is built by :meth:`handler_class`."""

    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, dict[str, Any]] = {}
        self.log: list[tuple[str, str]] = []
        self.dropped = threading.Event()
        self.fail: dict[str, int] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler_class())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def files(self, repo: str) -> dict[str, bytes]:
        """The files of the repo's default branch, as committed."""
        return {p: f["data"] for p, f in self.repos[repo]["files"].items()}

    def calls(self, method: str, pattern: str) -> list[str]:
        """Logged request paths for ``method`` matching the regex ``pattern``."""
        return [p for m, p in self.log if m == method and re.search(pattern, p)]


class JsonHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _body(self, limit: int | None = None) -> bytes:
        """The request body (at most ``limit`` bytes), plain or chunked."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(out)
                if limit is not None and len(out) + size > limit:
                    out += self.rfile.read(max(limit - len(out), 0))
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length", "0") or 0)
        return self.rfile.read(n if limit is None else min(n, limit))

    def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _drop_half_way(self, server: LocalServer) -> None:
        """Read half the request body, then kill the connection (a network failure mid-upload)."""
        self._body(limit=max(int(self.headers.get("Content-Length", "0") or 0) // 2, 1))
        server.dropped.set()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
