"""meshlib.transport.aio against real loopback sockets: plain TCP, TLS, and every error.

The backend must keep httpcore's contract (the exceptions, ``b""`` at end of stream, the
``get_extra_info`` keys), since httpcore's pool and HTTP/1.1 code run on top of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpcore
import pytest

from meshlib.identity.tls import build_client_context, build_server_context
from meshlib.testing._ca import TestCA
from meshlib.transport.aio import AsyncioBackend

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
_WRITERS: set[asyncio.StreamWriter] = set()


async def _serve(handler: Handler, context: ssl.SSLContext | None = None) -> asyncio.Server:
    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _WRITERS.add(writer)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    return await asyncio.start_server(tracked, "127.0.0.1", 0, ssl=context)


async def _stop(server: asyncio.Server) -> None:
    """Close the server and every connection it accepted (no socket left to the GC)."""
    server.close()
    for writer in list(_WRITERS):
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    _WRITERS.clear()
    await server.wait_closed()


def _port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


def _with_echo(body: Callable[[int], Awaitable[None]]) -> None:
    async def main() -> None:
        server = await _serve(_echo)
        try:
            await body(_port(server))
        finally:
            await _stop(server)

    asyncio.run(main())


def test_write_then_read_echoes_and_splits_at_max_bytes() -> None:
    _with_echo(_echo_round_trip)


async def _echo_round_trip(echo: int) -> None:
    stream = await AsyncioBackend().connect_tcp("127.0.0.1", echo, timeout=5)
    await stream.write(b"hello world", timeout=5)
    first = await stream.read(5, timeout=5)
    rest = b""
    while len(first) + len(rest) < 11:
        rest += await stream.read(100, timeout=5)
    assert (first, rest) == (b"hello", b" world")
    assert stream.get_extra_info("server_addr")[1] == echo
    assert stream.get_extra_info("client_addr")[0] == "127.0.0.1"
    assert stream.get_extra_info("socket").fileno() >= 0
    assert stream.get_extra_info("ssl_object") is None
    assert stream.get_extra_info("is_readable") is False
    await stream.aclose()


def test_read_timeout_raises_read_timeout() -> None:
    _with_echo(_read_times_out)


async def _read_times_out(echo: int) -> None:
    stream = await AsyncioBackend().connect_tcp("127.0.0.1", echo, timeout=5)
    with pytest.raises(httpcore.ReadTimeout):
        await stream.read(10, timeout=0.05)
    await stream.aclose()


def test_end_of_stream_reads_empty_and_marks_idle_connection_readable() -> None:
    asyncio.run(_end_of_stream_reads_empty_and_marks_idle_connection_readable())


async def _end_of_stream_reads_empty_and_marks_idle_connection_readable() -> None:
    async def close_at_once(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await _serve(close_at_once)
    stream = await AsyncioBackend().connect_tcp("127.0.0.1", _port(server), timeout=5)
    assert await stream.read(10, timeout=5) == b""
    # the pool asks this of an idle connection before reusing it
    assert stream.get_extra_info("is_readable") is True
    with pytest.raises(httpcore.WriteError):
        await stream.write(b"x", timeout=1)
    await stream.aclose()
    await _stop(server)


def test_connect_refused_and_connect_timeout() -> None:
    asyncio.run(_connect_refused_and_connect_timeout())


async def _connect_refused_and_connect_timeout() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(httpcore.ConnectError):
        await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
    with pytest.raises(httpcore.ConnectTimeout):
        await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=0)


def _contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext, ssl.SSLContext]:
    ca, other = TestCA("mesh.local"), TestCA("mesh.local")
    server = ca.mint("orders", "default")
    client = ca.mint("frontend", "default")
    stranger = other.mint("frontend", "default")
    return (
        build_server_context(server, tmp_path),
        build_client_context(client, ca.bundle_pem, tmp_path),
        build_client_context(stranger, other.bundle_pem, tmp_path),
    )


def test_start_tls_handshakes_and_exposes_the_ssl_object(tmp_path: Path) -> None:
    asyncio.run(_start_tls_handshakes_and_exposes_the_ssl_object(tmp_path))


async def _start_tls_handshakes_and_exposes_the_ssl_object(tmp_path: Path) -> None:
    server_ctx, client_ctx, _ = _contexts(tmp_path)
    server = await _serve(_echo, server_ctx)
    plain = await AsyncioBackend().connect_tcp("127.0.0.1", _port(server), timeout=5)
    stream = await plain.start_tls(client_ctx, server_hostname="orders", timeout=5)
    ssl_object = stream.get_extra_info("ssl_object")
    assert ssl_object is not None and ssl_object.getpeercert(True)
    await stream.write(b"over tls", timeout=5)
    assert await stream.read(100, timeout=5) == b"over tls"
    await stream.aclose()
    await _stop(server)


def test_failed_handshake_raises_connect_error(tmp_path: Path) -> None:
    asyncio.run(_failed_handshake_raises_connect_error(tmp_path))


async def _failed_handshake_raises_connect_error(tmp_path: Path) -> None:
    server_ctx, _, stranger_ctx = _contexts(tmp_path)
    server = await _serve(_echo, server_ctx)
    plain = await AsyncioBackend().connect_tcp("127.0.0.1", _port(server), timeout=5)
    with pytest.raises(httpcore.ConnectError, match="TLS handshake failed"):
        await plain.start_tls(stranger_ctx, server_hostname="orders", timeout=5)
    await _stop(server)


def test_handshake_timeout_raises_connect_timeout(tmp_path: Path) -> None:
    asyncio.run(_handshake_timeout_raises_connect_timeout(tmp_path))


async def _handshake_timeout_raises_connect_timeout(tmp_path: Path) -> None:
    _, client_ctx, _ = _contexts(tmp_path)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)  # takes the ClientHello, never answers
        await reader.read(65536)  # until the client gives up
        writer.close()

    server = await _serve(silent)
    plain = await AsyncioBackend().connect_tcp("127.0.0.1", _port(server), timeout=5)
    with pytest.raises(httpcore.ConnectTimeout):
        await plain.start_tls(client_ctx, server_hostname="orders", timeout=0.2)
    await _stop(server)
