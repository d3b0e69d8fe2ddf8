"""An httpcore network backend on asyncio's own transports, for the mesh's async pools.

httpcore's default async backend goes through AnyIO: every read and write opens a cancel
scope, asks sniffio which event loop runs, and TLS is AnyIO's pure-Python wrapper of an
``ssl.SSLObject``. On a kept-alive connection that is most of what an async request costs
over a sync one (``benchmarks.micro``: several thousand interpreter steps per request).
This backend speaks to asyncio directly: a :class:`asyncio.Protocol` collects what
arrives, a read waits on one future with one timer for its timeout, TLS is asyncio's
``loop.start_tls``. It keeps httpcore's contract: the same exceptions
(``ConnectError``/``ConnectTimeout``, ``ReadError``/``ReadTimeout``,
``WriteError``/``WriteTimeout``), ``b""`` at end of stream, and the ``get_extra_info`` keys
httpcore asks for (``ssl_object``, ``client_addr``, ``server_addr``, ``socket``,
``is_readable``).

It runs only under asyncio; the mesh's async transports are asyncio-only anyway (FastAPI,
uvicorn). Under another event loop (trio) they fall back to httpcore's AnyIO backend.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any

import httpcore

__all__ = ["AsyncioBackend", "AsyncioStream"]

DEFAULT_TLS_HANDSHAKE_TIMEOUT = 10.0


class _Receiver(asyncio.Protocol):
    """Buffers what the transport delivers; wakes the one reader or writer waiting."""

    __slots__ = ("_drained", "_paused", "_waiter", "chunks", "eof", "error", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.eof = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._drained: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close the transport: HTTP/1.1 has no use for a half-open connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    # ------------------------------------------------------------------ waiting

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_data(self, timeout: float | None) -> None:
        """Wait until data, end of stream or an error arrives (TimeoutError after *timeout*)."""
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        await _within(waiter, timeout)

    async def wait_drained(self, timeout: float | None) -> None:
        """Wait until the transport's write buffer drains below its high-water mark."""
        if not self._paused or self.error is not None:
            return
        drained = self._drained = asyncio.get_running_loop().create_future()
        await _within(drained, timeout)


async def _within(future: asyncio.Future[None], timeout: float | None) -> None:
    if timeout is None:
        await future
        return
    timer = asyncio.get_running_loop().call_later(timeout, _expire, future)
    try:
        await future
    finally:
        timer.cancel()


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One connection: an asyncio transport and the :class:`_Receiver` it feeds."""

    __slots__ = ("_receiver", "_transport")

    def __init__(self, transport: asyncio.Transport, receiver: _Receiver) -> None:
        self._transport = transport
        self._receiver = receiver

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        receiver = self._receiver
        chunks = receiver.chunks
        if not chunks:
            if receiver.error is not None:
                raise httpcore.ReadError(str(receiver.error) or repr(receiver.error))
            if receiver.eof:
                return b""
            try:
                await receiver.wait_data(timeout)
            except TimeoutError:
                raise httpcore.ReadTimeout("timed out reading from the connection") from None
            if not chunks:
                if receiver.error is not None:
                    raise httpcore.ReadError(str(receiver.error) or repr(receiver.error))
                return b""
        chunk = chunks.popleft()
        if len(chunk) > max_bytes:
            chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        return chunk

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        receiver = self._receiver
        if receiver.error is not None or self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        self._transport.write(buffer)
        try:
            await receiver.wait_drained(timeout)
        except TimeoutError:
            raise httpcore.WriteTimeout("timed out writing to the connection") from None

    async def aclose(self) -> None:
        # At once, as httpcore's AnyIO backend does (no TLS close_notify): the pool closes a
        # connection only between requests, with nothing left to send, and an orderly TLS
        # shutdown would outlive an event loop that ends right after (unclosed sockets).
        self._transport.abort()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout or DEFAULT_TLS_HANDSHAKE_TIMEOUT):
                transport = await loop.start_tls(
                    self._transport, self._receiver, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError as exc:
            self._transport.abort()
            raise httpcore.ConnectTimeout(f"TLS handshake timed out: {exc}") from exc
        except (OSError, ssl.SSLError) as exc:
            self._transport.abort()
            raise httpcore.ConnectError(f"TLS handshake failed: {exc}") from exc
        if transport is None:  # pragma: no cover - the transport closed under us
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        self._receiver.transport = transport
        return AsyncioStream(transport, self._receiver)

    def get_extra_info(self, info: str) -> Any:
        transport = self._transport
        if info == "ssl_object":
            return transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return transport.get_extra_info("sockname")
        if info == "server_addr":
            return transport.get_extra_info("peername")
        if info == "socket":
            return transport.get_extra_info("socket")
        if info == "is_readable":
            # An idle kept-alive connection is "readable" when the server closed it (or sent
            # something unasked): the pool must not reuse it.
            receiver = self._receiver
            return bool(receiver.chunks) or receiver.eof
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """Opens :class:`AsyncioStream` connections with ``loop.create_connection``."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        try:
            async with asyncio.timeout(timeout):
                transport, receiver = await loop.create_connection(
                    _Receiver, host, port, local_addr=local
                )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"timed out connecting to {host}:{port}") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or repr(exc)) from exc
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return AsyncioStream(transport, receiver)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
