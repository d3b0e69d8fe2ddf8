"""Run an ASGI app under uvicorn with the mesh certificate.

uvicorn neither exposes the peer certificate nor rotates certificates by itself. This
module adds both:

* :func:`tls_protocol` subclasses uvicorn's HTTP protocol so each connection computes the
  ASGI TLS extension once (peer chain, TLS version, and meshlib's ``spiffe_id``) and puts
  it into every request scope of that connection. ``spiffe_id`` is set only for a leaf that
  passes the X.509-SVID rules of :class:`meshlib.identity.svid.PeerSVIDValidator` (this
  mesh's trust domain, a workload path, not a CA); otherwise ``client_cert_error`` says
  why, and the middleware (or the control API) refuses every request of the connection;
* the listening socket gets a front SSLContext from :class:`meshlib.identity.tls.TLSContexts`
  that follows every rotation.

``meshlib.serve(app, mesh=mesh)`` is the one-line entry point. With ``plaintext_port`` it
also listens without TLS on a second port, for callers that cannot do mTLS; whether they
are admitted is the PeerAuthentication policy's decision (STRICT refuses them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from meshlib.errors import ConfigError, IdentityError, MeshError
from meshlib.identity.svid import PeerSVIDValidator
from meshlib.integrations.asgi import ASGIApp, MeshMiddleware

try:
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("meshlib.serve needs uvicorn: pip install 'inproc-mesh[fastapi]'") from exc

if TYPE_CHECKING:
    from meshlib.mesh import Mesh

__all__ = ["MeshServer", "aserve", "listen_socket", "serve", "tls_extension", "tls_protocol"]

_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


ValidatorSource = Callable[[], PeerSVIDValidator]


def tls_extension(
    transport: asyncio.BaseTransport, validator: PeerSVIDValidator
) -> dict[str, Any] | None:
    """The ASGI TLS extension for one connection, or None when it is not TLS.

    ``spiffe_id`` is the peer's ID when its leaf passes *validator*, else None with the
    reason in ``client_cert_error``.
    """
    sslobj = transport.get_extra_info("ssl_object")
    if sslobj is None:
        return None
    der = sslobj.getpeercert(binary_form=True)
    spiffe_id: str | None = None
    error: str | None = None
    if der is None:
        error = "no client certificate"
    else:
        try:
            spiffe_id = str(validator.validate_der(der))
        except IdentityError as exc:
            error = str(exc)
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": None,
        "client_cert_error": error,
        "tls_version": _TLS_VERSIONS.get(sslobj.version() or ""),
        "cipher_suite": None,
        "spiffe_id": spiffe_id,
    }


def tls_protocol(base: type[Any], *, validator: ValidatorSource) -> type[Any]:
    """Subclass a uvicorn HTTP protocol so its scopes carry the TLS extension.

    Args:
        base: uvicorn's ``H11Protocol`` or ``HttpToolsProtocol``.
        validator: returns the peer validator of the serving identity (read per
            connection, so a server may be built before its mesh has an SVID).
    """

    class TLSProtocol(base):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            extension = tls_extension(transport, validator())
            if extension is None:
                return
            this: Any = self  # uvicorn's protocols are untyped here
            inner = this.app

            async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
                extensions = scope.get("extensions")
                if extensions is None:
                    scope["extensions"] = {"tls": extension}
                else:
                    extensions["tls"] = extension
                await inner(scope, receive, send)

            this.app = app

        def shutdown(self) -> None:
            # An idle kept-alive connection is closed at once, without waiting for the
            # caller's TLS close_notify: mesh clients keep pooled connections open and a
            # sync one is not reading, so a graceful TLS close would hold the shutdown for
            # uvicorn's whole grace period. HTTP/1.1 framing makes the truncation harmless.
            this: Any = self
            cycle = this.cycle
            if cycle is None or cycle.response_complete:
                this.transport.abort()
            else:
                super().shutdown()

    TLSProtocol.__name__ = f"TLS{base.__name__}"
    return TLSProtocol


def _http_protocol(validator: ValidatorSource) -> type[Any]:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is optional; h11 always ships with uvicorn
        return tls_protocol(H11Protocol, validator=validator)
    return tls_protocol(HttpToolsProtocol, validator=validator)


def listen_socket(host: str, port: int, what: str) -> socket.socket:
    """A TCP socket bound to ``host:port`` for uvicorn to listen on.

    Binding before uvicorn starts turns a taken port into one
    :class:`meshlib.errors.ConfigError` naming *what* (a flag or parameter), instead of
    uvicorn's log line and ``SystemExit(3)``.
    """
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"{what} {host}:{port}: cannot listen: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{what} {host}:{port}: cannot listen: {exc.strerror or exc}") from None
    return sock


def _advertised(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


class MeshServer:
    """uvicorn serving *app* with the mesh identity; registers the instance once listening.

    Args:
        app: the ASGI app; wrapped in :class:`meshlib.MeshMiddleware` (harmless if already added).
        mesh: a started or startable :class:`meshlib.Mesh`.
        host, port: the mTLS listener.
        plaintext_port: optional second listener without TLS (see PeerAuthentication).
        advertise: address registered for this instance (default: *host*, or 127.0.0.1).
        announce: print one line on stderr once listening (what, where, as whom);
            :func:`serve` and :func:`aserve` turn it on.
        uvicorn_options: passed to ``uvicorn.Config``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        mesh: Mesh,
        host: str = "127.0.0.1",
        port: int = 8443,
        plaintext_port: int | None = None,
        advertise: str | None = None,
        announce: bool = False,
        **uvicorn_options: Any,
    ) -> None:
        self.mesh = mesh
        self.announce = announce
        self.host = host
        self.port = port
        self.plaintext_port = plaintext_port
        self.advertise = advertise or mesh.config.advertise or _advertised(host)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        wrapped = MeshMiddleware(app, mesh=mesh)
        options: dict[str, Any] = {
            "log_level": "warning",
            "lifespan": "auto",
            # Idle keep-alive connections from callers must not hold a shutdown for long.
            "timeout_graceful_shutdown": 2,
        } | uvicorn_options
        protocol = _http_protocol(lambda: mesh.tls.peer_validator)

        def context_factory(_config: Any, _default: Callable[[], ssl.SSLContext]) -> Any:
            return mesh.tls.server_context()

        self._tls_server = uvicorn.Server(
            uvicorn.Config(
                cast(Any, wrapped),
                host=host,
                port=port,
                http=protocol,
                ssl_context_factory=context_factory,
                **options,
            )
        )
        self._plain_server = (
            uvicorn.Server(
                uvicorn.Config(
                    cast(Any, wrapped),
                    host=host,
                    port=plaintext_port,
                    **(options | {"lifespan": "off"}),
                )
            )
            if plaintext_port is not None
            else None
        )

    @property
    def started(self) -> bool:
        """True once every listener accepts connections."""
        return self._tls_server.started and (
            self._plain_server is None or self._plain_server.started
        )

    def bound_port(self) -> int:
        """The mTLS port actually bound (useful with ``port=0``)."""
        for server in self._tls_server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.port

    def _plain_bound_port(self) -> int | None:
        if self._plain_server is None:
            return None
        for server in self._plain_server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.plaintext_port

    async def serve(self) -> None:
        """Serve until :meth:`stop` or a signal; deregisters the instance first on the way out."""
        sockets = [listen_socket(self.host, self.port, "port")]
        if self._plain_server is not None and self.plaintext_port is not None:
            try:
                sockets.append(listen_socket(self.host, self.plaintext_port, "plaintext_port"))
            except ConfigError:
                sockets[0].close()
                raise
        started_here = not self.mesh.started
        if started_here:
            try:
                await self.mesh.astart()
            except BaseException:
                for sock in sockets:
                    sock.close()
                raise
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        self._install_signal_handlers()
        tasks = [asyncio.create_task(self._tls_server.serve(sockets=sockets[:1]))]
        if self._plain_server is not None:
            tasks.append(asyncio.create_task(self._plain_server.serve(sockets=sockets[1:])))
        stopper = asyncio.create_task(self._stop_requested.wait())
        try:
            while not self.started:
                if any(t.done() for t in tasks) or stopper.done():
                    break
                await asyncio.sleep(0.01)
            if self.started:
                self.mesh.set_endpoint(
                    self.advertise, self.bound_port(), plaintext_port=self._plain_bound_port()
                )
                if self.announce:
                    print(self.listening_line(), file=sys.stderr, flush=True)
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            # Withdraw first, so callers stop picking this instance, then drain and close.
            await asyncio.to_thread(self.mesh.clear_endpoint)
            self._exit_listeners()
            await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                if task is not stopper:
                    task.result()
        finally:
            stopper.cancel()
            for task in tasks:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if started_here:  # we own it: deregister and stop its agent
                await self.mesh.aclose()
            for sock in sockets:
                sock.close()

    def listening_line(self) -> str:
        """``meshlib: orders.default listening on https://…:8443 (mTLS) as spiffe://…``."""
        config = self.mesh.config
        line = (
            f"meshlib: {config.service}.{config.namespace} listening on "
            f"https://{self.host}:{self.bound_port()} (mTLS) as {self.mesh.spiffe_id}"
        )
        plain = self._plain_bound_port()
        if plain is not None:
            line += f"; plaintext http://{self.host}:{plain}"
        if self.mesh.admin_port is not None:
            line += f"; admin http://127.0.0.1:{self.mesh.admin_port}"
        return line + f"; control {config.control_url}"

    def _install_signal_handlers(self) -> None:
        # uvicorn re-raises SIGINT/SIGTERM once its serve() returns, which would end the
        # process before the endpoint is withdrawn: handle the signals here instead.
        for server in (self._tls_server, self._plain_server):
            if server is not None:
                server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign, assignment]
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)

    def stop(self) -> None:
        """Withdraw the instance, then let every listener finish its requests and stop.

        Safe to call from any thread or a signal handler.
        """
        loop, requested = self._loop, self._stop_requested
        if loop is None or requested is None or loop.is_closed():
            self._exit_listeners()
        elif loop is _running_loop():
            requested.set()
        else:
            loop.call_soon_threadsafe(requested.set)

    def _exit_listeners(self) -> None:
        self._tls_server.should_exit = True
        if self._plain_server is not None:
            self._plain_server.should_exit = True


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def aserve(app: ASGIApp, *, mesh: Mesh, **options: Any) -> None:
    """Async form of :func:`serve`."""
    await MeshServer(app, mesh=mesh, **({"announce": True} | options)).serve()


def serve(app: ASGIApp, *, mesh: Mesh, **options: Any) -> None:
    """Run *app* on uvicorn with the mesh certificate until interrupted.

    Starts the mesh if needed, requires client certificates from the mesh's trust bundle,
    rotates certificates without a restart, exposes the peer certificate in
    ``scope["extensions"]["tls"]``, enforces the inbound policy, and registers the
    instance with the control service once it listens.

    Meant as a program's main: a :class:`~meshlib.errors.MeshError` (a taken port, the
    control service not answering within ``start_timeout``, bad configuration) ends the
    process with one ``meshlib: …`` line and exit code 1; with ``MESH_LOG_LEVEL=debug`` it
    is raised with its traceback. :func:`aserve` and :class:`MeshServer` always raise.
    """
    try:
        asyncio.run(aserve(app, mesh=mesh, **options))
    except MeshError as exc:
        if os.environ.get("MESH_LOG_LEVEL", "").lower() == "debug":
            raise
        raise SystemExit(f"meshlib: {exc}") from None
