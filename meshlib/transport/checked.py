"""httpx transports that carry calls over the mesh (``meshlib.integrations.httpx`` re-exports them).

Two layers, each wrapping the next (the httpx way):

* :class:`AsyncIdentityTransport` / :class:`IdentityTransport` send a request to the URL it
  names over mutual TLS, and check — right after the handshake, before a byte of the
  request is written — that the server's certificate is an X.509-SVID (the leaf rules of
  :func:`meshlib.identity.svid.check_svid_leaf`) for one expected SPIFFE ID. Connections
  are pooled per endpoint, so the check runs once per connection. A refusal raises
  :class:`~meshlib.errors.PeerIdentityError`, which the mesh transports count as a connect
  failure (nothing was sent).
* given ``external`` (an ExternalService's spec, docs/consul.md), the same transports
  send to a destination outside the mesh: plaintext for ``tls: none``, else HTTPS with
  the server verified against the spec's CA (the system store without one) and its SNI
  name. No SPIFFE ID is expected and the mesh's client certificate is not presented.
* the mesh transports (:mod:`meshlib.integrations.httpx_mesh`) turn
  ``http://orders/path`` into a call to one endpoint of ``orders`` and send it through the
  identity transport of that service.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpcore
import httpx
from httpx._transports.default import map_httpcore_exceptions

from meshlib.errors import IdentityError, PeerIdentityError
from meshlib.identity.spiffe import SpiffeId
from meshlib.identity.svid import PeerSVIDValidator
from meshlib.policy.engine import PolicyEngine
from meshlib.policy.externalmodel import ExternalServiceSpec
from meshlib.transport.aio import AsyncioBackend

__all__ = ["AsyncIdentityTransport", "IdentityTransport", "check_peer", "expected_validator"]

ContextSource = Callable[[], ssl.SSLContext]
EngineSource = Callable[[], PolicyEngine]

DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_KEEPALIVE_EXPIRY = 30.0


def expected_validator(expected: str) -> PeerSVIDValidator:
    """A validator for servers that must present *expected*: its trust domain only."""
    return PeerSVIDValidator({SpiffeId.parse(expected).trust_domain}, capacity=64)


def check_peer(
    ssl_object: ssl.SSLObject | ssl.SSLSocket | None,
    expected: str,
    where: str,
    validator: PeerSVIDValidator | None = None,
) -> str:
    """Return the peer's SPIFFE ID, or raise :class:`meshlib.errors.PeerIdentityError`.

    It is raised unless the peer is *expected*.

    The server's leaf must be a valid X.509-SVID (one URI SAN, a workload path, *expected*'s
    trust domain, not a CA) and carry exactly *expected*.

    Args:
        ssl_object: the connection's, after the handshake.
        expected: the SPIFFE ID the server must present.
        where: ``host:port``, for the message.
        validator: caches verdicts across connections (default: a fresh one for
            *expected*'s trust domain).
    """
    if ssl_object is None:
        raise PeerIdentityError(
            f"connection to {where} is not TLS; expected {expected}", expected=expected, actual=None
        )
    der = ssl_object.getpeercert(True)  # positional: _ssl._SSLSocket takes no keywords
    try:
        if der is None:
            raise IdentityError("the peer presented no certificate")
        actual = str((validator or expected_validator(expected)).validate_der(der))
    except IdentityError as exc:
        raise PeerIdentityError(
            f"server at {where} did not present a valid X.509-SVID: {exc}; no request was sent",
            expected=expected,
            actual=None,
        ) from exc
    if actual != expected:
        raise PeerIdentityError(
            f"server at {where} presented {actual}, expected {expected}; no request was sent",
            expected=expected,
            actual=actual,
        )
    return actual


# --------------------------------------------------------------------- network backends


class _Expectation:
    """What a server must present: one SPIFFE ID, and the validator of its trust domain."""

    __slots__ = ("expected", "validator")

    def __init__(self, expected: str) -> None:
        self.expected = expected
        self.validator = expected_validator(expected)

    def check(self, ssl_object: Any, where: str) -> None:
        check_peer(ssl_object, self.expected, where, self.validator)


class _AsyncCheckedStream(httpcore.AsyncNetworkStream):
    def __init__(
        self,
        inner: httpcore.AsyncNetworkStream,
        where: str,
        expected: _Expectation,
        tls: ContextSource,
    ) -> None:
        self._inner = inner
        self._where = where
        self._expected = expected
        self._tls = tls

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # The pool's context is ignored: the current SVID's context is read here, at
        # handshake time, so rotations apply to every new connection.
        stream = await self._inner.start_tls(self._tls(), server_hostname, timeout)
        try:
            self._expected.check(stream.get_extra_info("ssl_object"), self._where)
        except PeerIdentityError:
            await stream.aclose()
            raise
        return stream

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncCheckedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, expected: str, tls: ContextSource) -> None:
        self._asyncio = AsyncioBackend()
        self._anyio: httpcore.AsyncNetworkBackend | None = None
        self._expected = _Expectation(expected)
        self._tls = tls

    def _inner(self) -> httpcore.AsyncNetworkBackend:
        # asyncio's own transports (meshlib.transport.aio) under asyncio, AnyIO otherwise.
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # another event loop (trio)
            pass
        else:
            return self._asyncio
        if self._anyio is None:
            self._anyio = httpcore.AnyIOBackend()
        return self._anyio

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        inner = self._inner()
        stream = await inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _AsyncCheckedStream(stream, f"{host}:{port}", self._expected, self._tls)

    async def sleep(self, seconds: float) -> None:
        await self._inner().sleep(seconds)


class _CheckedStream(httpcore.NetworkStream):
    def __init__(
        self, inner: httpcore.NetworkStream, where: str, expected: _Expectation, tls: ContextSource
    ) -> None:
        self._inner = inner
        self._where = where
        self._expected = expected
        self._tls = tls

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.start_tls(self._tls(), server_hostname, timeout)
        try:
            self._expected.check(stream.get_extra_info("ssl_object"), self._where)
        except PeerIdentityError:
            stream.close()
            raise
        return stream

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _CheckedBackend(httpcore.NetworkBackend):
    def __init__(self, expected: str, tls: ContextSource) -> None:
        self._inner = httpcore.SyncBackend()
        self._expected = _Expectation(expected)
        self._tls = tls

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _CheckedStream(stream, f"{host}:{port}", self._expected, self._tls)


# --------------------------------------------------------------------- request mapping


def _core_request(
    request: httpx.Request,
    host: str | bytes,
    port: int | None,
    sni: str | None,
    extra: list[tuple[bytes, bytes]] | None,
    scheme: bytes = b"https",
) -> httpcore.Request:
    extensions = dict(request.extensions)
    if sni is not None:
        extensions["sni_hostname"] = sni
    headers = request.headers.raw
    if extra:
        # the mesh's own headers (lower-case keys) replace any the caller set
        keys = {key for key, _ in extra}
        headers = [h for h in headers if h[0].lower() not in keys]
        headers.extend(extra)
    return httpcore.Request(
        method=request.method,
        url=httpcore.URL(
            scheme=scheme,
            host=host if isinstance(host, bytes) else host.encode("ascii"),
            port=port,
            target=request.url.raw_path,
        ),
        headers=headers,
        content=request.stream,
        extensions=extensions,
    )


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with map_httpcore_exceptions():
            async for part in self._inner:
                yield part

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Body(httpx.SyncByteStream):
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __iter__(self) -> Iterator[bytes]:
        with map_httpcore_exceptions():
            yield from self._inner

    def close(self) -> None:
        self._inner.close()


# Given to every pool so that httpcore never builds its default context for a new connection
# (it loads the system and certifi CA stores: tens of ms of CPU and ~1 MiB of memory per
# connection, measured in benchmarks). Never used to handshake: start_tls above swaps in
# the current SVID's context. httpcore only sets ALPN on it, the same value every time.
_POOL_PLACEHOLDER_CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def _pool_args(max_connections: int, external: ExternalServiceSpec | None = None) -> dict[str, Any]:
    return {
        "ssl_context": _POOL_PLACEHOLDER_CONTEXT
        if external is None
        else external_context(external),
        "max_connections": max_connections,
        "keepalive_expiry": DEFAULT_KEEPALIVE_EXPIRY,
        "http1": True,
        "http2": False,
    }


def external_context(spec: ExternalServiceSpec) -> ssl.SSLContext:
    """The client context for an ExternalService with ``tls: tls``: its CA (else the
    system trust store), hostname checked; no client certificate."""
    context = ssl.create_default_context(cadata=spec.ca_certificate or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _external_args(spec: ExternalServiceSpec | None, sni: str | None) -> tuple[bytes, str | None]:
    """(URL scheme, SNI) of a pool: mesh mTLS, or what the ExternalService says."""
    if spec is None:
        return b"https", sni
    return (b"http" if spec.tls == "none" else b"https"), spec.sni


# --------------------------------------------------------------------- identity transports


class AsyncIdentityTransport(httpx.AsyncBaseTransport):
    """Send each request to its URL over mTLS, refusing a server that is not *expected*.

    Args:
        expected: the SPIFFE ID the server must present (ignored with *external*).
        tls: returns the client SSLContext to use for a new connection.
        sni: server name to send, for example the service's DNS SAN.
        external: an ExternalService's spec: no identity check (see the module docstring).
    """

    def __init__(
        self,
        *,
        expected: str,
        tls: ContextSource,
        sni: str | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        external: ExternalServiceSpec | None = None,
    ) -> None:
        self.expected = "" if external is not None else expected
        self._scheme, self._sni = _external_args(external, sni)
        backend = AsyncioBackend() if external is not None else _AsyncCheckedBackend(expected, tls)
        self._pool = httpcore.AsyncConnectionPool(
            network_backend=backend, **_pool_args(max_connections, external)
        )

    async def send_to(
        self,
        request: httpx.Request,
        host: str | bytes,
        port: int | None,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> httpx.Response:
        """Send *request* to ``host:port`` whatever its URL says, with *extra_headers*."""
        core = _core_request(request, host, port, self._sni, extra_headers, self._scheme)
        with map_httpcore_exceptions():
            resp = await self._pool.handle_async_request(core)
        return httpx.Response(
            status_code=resp.status,
            headers=resp.headers,
            stream=_AsyncBody(resp.stream),
            extensions=resp.extensions,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.send_to(request, request.url.raw_host, request.url.port)

    async def aclose(self) -> None:
        await self._pool.aclose()


class IdentityTransport(httpx.BaseTransport):
    """Sync twin of :class:`AsyncIdentityTransport`."""

    def __init__(
        self,
        *,
        expected: str,
        tls: ContextSource,
        sni: str | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        external: ExternalServiceSpec | None = None,
    ) -> None:
        self.expected = "" if external is not None else expected
        self._scheme, self._sni = _external_args(external, sni)
        backend = httpcore.SyncBackend() if external is not None else _CheckedBackend(expected, tls)
        self._pool = httpcore.ConnectionPool(
            network_backend=backend, **_pool_args(max_connections, external)
        )

    def send_to(
        self,
        request: httpx.Request,
        host: str | bytes,
        port: int | None,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> httpx.Response:
        """Send *request* to ``host:port`` whatever its URL says, with *extra_headers*."""
        core = _core_request(request, host, port, self._sni, extra_headers, self._scheme)
        with map_httpcore_exceptions():
            resp = self._pool.handle_request(core)
        return httpx.Response(
            status_code=resp.status,
            headers=resp.headers,
            stream=_Body(resp.stream),
            extensions=resp.extensions,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.send_to(request, request.url.raw_host, request.url.port)

    def close(self) -> None:
        self._pool.close()
