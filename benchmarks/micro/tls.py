"""Part 2: mTLS handshake and per-request record cost on loopback sockets."""

from __future__ import annotations

import socket
import statistics
import time
from typing import Any

from benchmarks.micro.backend import Backend
from benchmarks.micro.identities import Identities
from benchmarks.micro.settings import REQUEST_BYTES, RESPONSE_BYTES, Profile
from benchmarks.micro.timing import lat_us


def _recv_exact(sock: socket.socket, size: int) -> None:
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise ConnectionError("server closed the connection")
        size -= len(chunk)


def measure_tls(profile: Profile, backend: Backend, ids: Identities) -> dict[str, Any]:
    """Handshake cost and per-request record cost of mTLS, on loopback sockets."""
    from meshlib.integrations.httpx import check_peer

    server_id = str(ids.server.spiffe_id)
    ctx = ids.client_context

    def connect(port: int) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def timed_connects(tls: bool) -> list[float]:
        out: list[float] = []
        deadline = time.perf_counter() + profile.item_time_cap * 3
        for _ in range(profile.handshakes):
            start = time.perf_counter_ns()
            sock: socket.socket
            if tls:
                raw = connect(backend.echo_tls)
                sock = ctx.wrap_socket(raw, server_hostname="backend.default.svc.mesh.local")
                check_peer(sock, server_id, "echo")
            else:
                sock = connect(backend.echo_plain)
            out.append(time.perf_counter_ns() - start)
            sock.close()
            if time.perf_counter() > deadline:
                break
        return out

    tcp = timed_connects(False)
    mtls = timed_connects(True)

    def round_trips(tls: bool) -> list[float]:
        sock: socket.socket
        if tls:
            sock = ctx.wrap_socket(connect(backend.echo_tls), server_hostname="backend")
        else:
            sock = connect(backend.echo_plain)
        payload = b"q" * REQUEST_BYTES
        out: list[float] = []
        try:
            for _ in range(profile.warmup):
                sock.sendall(payload)
                _recv_exact(sock, RESPONSE_BYTES)
            deadline = time.perf_counter() + profile.item_time_cap * 3
            for _ in range(profile.echo_requests):
                start = time.perf_counter_ns()
                sock.sendall(payload)
                _recv_exact(sock, RESPONSE_BYTES)
                out.append(time.perf_counter_ns() - start)
                if time.perf_counter() > deadline:
                    break
        finally:
            sock.close()
        return out

    plain_rt = round_trips(False)
    tls_rt = round_trips(True)
    med = statistics.median
    return {
        "request_bytes": REQUEST_BYTES,
        "response_bytes": RESPONSE_BYTES,
        "tcp_connect": lat_us(tcp),
        "tcp_connect_mtls_handshake": lat_us(mtls),
        "handshake_added_us": round((med(mtls) - med(tcp)) / 1000, 1),
        "plaintext_round_trip": lat_us(plain_rt),
        "tls_round_trip": lat_us(tls_rt),
        "tls_added_per_request_us": round((med(tls_rt) - med(plain_rt)) / 1000, 1),
        "tls_version": "TLSv1.3 (default) with ECDSA P-256 SVIDs, client certificate required",
    }
