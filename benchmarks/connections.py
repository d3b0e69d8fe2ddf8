"""The load generator's keep-alive HTTP/1.1 connections and the state of one run over them.

Raw sockets (``asyncio.Protocol``) and a hand-written HTTP/1.1 request keep the generator
cheap. :class:`LoadState` sends each request on an idle connection (opening one more when
none is idle, up to a bound) and records its latency from the intended send time and the
lag of the actual send behind it; :mod:`benchmarks.loadgen` paces the requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["KeepAliveConnection", "LoadState", "Target"]


@dataclass(frozen=True, slots=True)
class Target:
    """Where the requests go: ``http://host:port/path`` (HTTP/1.1, keep-alive)."""

    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"{url!r}: expected http://host:port/path")
        return cls(parts.hostname, parts.port, parts.path or "/")

    @property
    def request(self) -> bytes:
        return f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode()


class KeepAliveConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request in flight at a time."""

    def __init__(self, owner: LoadState) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.intended = 0
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, intended: int, request: bytes) -> None:
        assert self.transport is not None
        self.intended = intended
        self.busy = True
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length = 0
        marker = head.find(b"content-length:")
        if marker >= 0:
            line_end = head.find(b"\r\n", marker)
            length = int(head[marker + 15 : line_end if line_end >= 0 else None])
        elif b"transfer-encoding: chunked" in head:
            if not self.buffer.endswith(b"0\r\n\r\n"):
                return
            length = len(self.buffer) - end - 4
        if len(self.buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        del self.buffer[: end + 4 + length]
        self.busy = False
        self.owner.done(self, status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.lost(self)


@dataclass
class LoadState:
    """The state of one measured run over a pool of connections."""

    target: Target
    max_connections: int
    record_from: int = 0
    latencies: list[int] = field(default_factory=list)
    lags: list[int] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    in_flight: int = 0
    idle: deque[KeepAliveConnection] = field(default_factory=deque)
    waiting: deque[int] = field(default_factory=deque)
    connections: int = 0
    opening: int = 0
    closed_loop: bool = False
    stop_at: int = 0
    last_done: int = 0
    all_done: asyncio.Event = field(default_factory=asyncio.Event)
    sent_total: int = 0
    openers: set[asyncio.Future[None]] = field(default_factory=set)

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.opening += 1
        try:
            _, conn = await loop.create_connection(
                lambda: KeepAliveConnection(self), self.target.host, self.target.port
            )
        except OSError:
            self.opening -= 1
            self.errors += 1
            if self.waiting:
                self._give_up_one()
            return
        self.opening -= 1
        self.connections += 1
        self.release(conn)

    def _give_up_one(self) -> None:
        self.waiting.popleft()
        self.in_flight -= 1
        self.maybe_done()

    def dispatch(self, intended: int) -> None:
        """Send the request due at *intended* (ns), or queue it for the next free connection."""
        self.in_flight += 1
        self.sent_total += 1
        if self.idle:
            conn = self.idle.popleft()
            if intended >= self.record_from:
                self.lags.append(time.perf_counter_ns() - intended)
            conn.send(intended, self.target.request)
            return
        self.waiting.append(intended)
        if self.connections + self.opening < self.max_connections:
            task = asyncio.ensure_future(self.open())
            self.openers.add(task)
            task.add_done_callback(self.openers.discard)

    def release(self, conn: KeepAliveConnection) -> None:
        if self.waiting:
            intended = self.waiting.popleft()
            if intended >= self.record_from:
                self.lags.append(time.perf_counter_ns() - intended)
            conn.send(intended, self.target.request)
        elif self.closed_loop and time.perf_counter_ns() < self.stop_at:
            self.in_flight += 1
            self.sent_total += 1
            conn.send(time.perf_counter_ns(), self.target.request)
        else:
            self.idle.append(conn)

    def done(self, conn: KeepAliveConnection, status: int) -> None:
        now = time.perf_counter_ns()
        self.in_flight -= 1
        if conn.intended >= self.record_from:
            self.latencies.append(now - conn.intended)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.last_done = now
        if status >= 400:
            self.errors += 1
        self.release(conn)
        self.maybe_done()

    def lost(self, conn: KeepAliveConnection) -> None:
        self.connections -= 1
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        if conn.busy:
            conn.busy = False
            self.in_flight -= 1
            self.errors += 1
            self.maybe_done()

    def maybe_done(self) -> None:
        if self.in_flight == 0:
            self.all_done.set()

    def close(self) -> None:
        for conn in list(self.idle):
            if conn.transport is not None:
                conn.transport.close()
