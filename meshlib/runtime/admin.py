"""The instance's admin port: ``/metrics``, ``/ready``, ``/live``, ``/debug/*``.

A small threaded HTTP server on 127.0.0.1 (never the key: ``/debug/identity`` shows the
certificate and its validity only). The control service scrapes ``/metrics`` from every
registered instance to compute golden metrics.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["AdminServer"]

Handler = Callable[[], tuple[int, str, bytes]]


class AdminServer:
    """Serve *routes* (path → handler returning status, content type, body) on 127.0.0.1."""

    def __init__(self, routes: dict[str, Handler], *, host: str = "127.0.0.1", port: int = 0):
        table = routes

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                handler = table.get(self.path.split("?", 1)[0])
                if handler is None:
                    status, ctype, body = 404, "application/json", b'{"error":"not found"}'
                else:
                    try:
                        status, ctype, body = handler()
                    except Exception as exc:  # the admin port must not die with one page
                        status, ctype = 500, "application/json"
                        body = json.dumps({"error": repr(exc)}).encode()
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # scrapes every few seconds would flood the log

        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="meshlib-admin", daemon=True
        )

    def start(self) -> AdminServer:
        """Start serving in a daemon thread."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()


def json_page(body: Any, status: int = 200) -> tuple[int, str, bytes]:
    """A JSON response for an admin route."""
    return status, "application/json", json.dumps(body, indent=2, default=str).encode()
