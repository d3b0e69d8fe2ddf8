"""The server child process: uvicorn (plaintext, mTLS) and echo servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.micro.settings import REQUEST_BYTES, RESPONSE_BYTES, ROOT, SERVER_START_TIMEOUT


async def _asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b'{"item":"42","stock":7}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _echo_serve(listener: socket.socket, context: ssl.SSLContext | None) -> None:
    import threading

    def handle(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            stream: socket.socket = conn
            if context is not None:
                stream = context.wrap_socket(conn, server_side=True)
            reply = b"r" * RESPONSE_BYTES
            while True:
                need = REQUEST_BYTES
                while need:
                    chunk = stream.recv(need)
                    if not chunk:
                        return
                    need -= len(chunk)
                stream.sendall(reply)
        conn.close()

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


def serve_backend(tls_dir: Path) -> None:
    """Child-process entry: uvicorn (plain + mTLS) and TLS/plain echo servers; prints ports."""
    import uvicorn

    def bound() -> socket.socket:
        # proto=IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only
        # when the proto says TCP, and without it every response pays a delayed ACK (40 ms).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(512)
        return sock

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(tls_dir / "bundle.pem")
    server_ctx.load_cert_chain(tls_dir / "server.pem", tls_dir / "server.key")
    echo_plain, echo_tls = bound(), bound()
    _echo_serve(echo_plain, None)
    _echo_serve(echo_tls, server_ctx)
    http_plain, http_tls = bound(), bound()
    common: dict[str, Any] = {"log_level": "warning", "lifespan": "off", "access_log": False}
    plain = uvicorn.Server(uvicorn.Config(_asgi_app, **common))
    secure = uvicorn.Server(
        uvicorn.Config(
            _asgi_app,
            ssl_certfile=str(tls_dir / "server.pem"),
            ssl_keyfile=str(tls_dir / "server.key"),
            ssl_ca_certs=str(tls_dir / "bundle.pem"),
            ssl_cert_reqs=ssl.CERT_REQUIRED,
            **common,
        )
    )
    for server in (plain, secure):
        server.config.setup_event_loop = lambda: None  # type: ignore[method-assign]
    ports = [s.getsockname()[1] for s in (http_plain, http_tls, echo_plain, echo_tls)]

    async def main() -> None:
        tasks = [
            asyncio.create_task(plain.serve(sockets=[http_plain])),
            asyncio.create_task(secure.serve(sockets=[http_tls])),
        ]
        while not (plain.started and secure.started):
            await asyncio.sleep(0.02)
        print("ports", *ports, flush=True)
        # Exit when the parent closes our stdin (or dies).
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        plain.should_exit = secure.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


class Backend:
    """The server child process (``python -m benchmarks.micro --serve-backend DIR``)."""

    def __init__(self, tls_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.micro", "--serve-backend", str(tls_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            if self.proc.poll() is not None:
                raise RuntimeError("backend server exited before it was ready")
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                line += os.read(self.proc.stdout.fileno(), 256)
        parts = line.split()
        if len(parts) != 5 or parts[0] != b"ports":
            raise RuntimeError(f"backend server did not start: {line!r}")
        self.http_plain, self.http_tls, self.echo_plain, self.echo_tls = map(int, parts[1:])

    def stop(self) -> None:
        """Close its stdin (it exits), then terminate/kill if it lingers."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
