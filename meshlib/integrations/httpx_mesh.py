"""The mesh transports: ``http://<service>/…`` → route, resilience, one endpoint, mTLS.

One call, in order: resolve the service in the active view (one reference read) → match a
route (its plan is captured for the whole call) → the call driver
(:mod:`meshlib.traffic.driver`) decides the rest: fault delay and abort, admission against
pool limits, the endpoint of each try (weighted subset, not ejected, breaker closed, same
zone first, another endpoint than the last try), the per-try timeout, whether and when to
retry (outcome, method, deadline, budget). These transports only send and sleep, in a
short loop; :mod:`meshlib.integrations.httpx_call` maps requests, responses and errors.

A try that fails before a byte of the request is written — no connection
(``httpx.ConnectError``/``ConnectTimeout``), or a server at the endpoint that is not the
service's identity (:class:`~meshlib.errors.PeerIdentityError`, for instance a stale
endpoint now answered by another service) — is a ``connect-failure``, as Envoy counts it:
it is retried on another endpoint whatever the method (nothing was sent, so nothing can
happen twice), and it counts against that endpoint for breakers and outlier detection.

Failures the mesh itself decides are :class:`~meshlib.errors.RequestError` subclasses; a
response the mesh produced (fault abort) or shaped (budget exhausted) carries
``x-mesh-flag``. Upstream transport errors that are not retried surface as the httpx
exceptions they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from meshlib.errors import UnknownServiceError
from meshlib.integrations.httpx_call import ATTEMPTS_HEADER, HttpCall
from meshlib.runtime.view import ActiveView, Destination
from meshlib.telemetry.metrics import MeshTelemetry
from meshlib.traffic.driver import ABORT, DONE, SLEEP
from meshlib.transport.checked import AsyncIdentityTransport, IdentityTransport
from meshlib.transport.pools import MeshPools

__all__ = ["ATTEMPTS_HEADER", "AsyncMeshTransport", "MeshTransport"]

MIRROR_MAX_IN_FLIGHT = 64

ContextSource = Callable[[], Any]
ViewSource = Callable[[], ActiveView]


def _is_outside(host: str) -> bool:
    """Hosts with a dot, IPs and localhost leave the mesh; single labels are services."""
    return "." in host or ":" in host or host == "localhost"


class _Base:
    """What the sync and async mesh transports share: starting and ending a call."""

    def __init__(
        self,
        *,
        view: ViewSource,
        clock: Callable[[], float],
        telemetry: MeshTelemetry | None,
    ) -> None:
        self._view = view
        self._clock = clock
        self._telemetry = telemetry

    def _start(self, request: httpx.Request) -> HttpCall | None:
        host = request.url.host
        destination = self._view().resolve(host)
        if destination is None:
            if not _is_outside(host):
                raise UnknownServiceError(host)
            return None
        plan = destination.service.route(request.method, request.url.path, request.headers)
        return HttpCall(destination, plan, request, self._clock, self._telemetry)

    def _finish(
        self, call: HttpCall, response: httpx.Response | None, error: BaseException | None
    ) -> None:
        """Close the call's span and record its metrics; never raises."""
        call.observe_end(response, error)


class AsyncMeshTransport(_Base, httpx.AsyncBaseTransport):
    """Route ``http://<service>/…`` over the mesh; other hosts go to *outside*.

    Args:
        view: returns the active view (one attribute read): destinations and their
            shared runtimes (:mod:`meshlib.runtime.view`).
        tls: returns the current client SSLContext.
        outside: transport for hosts outside the mesh (default: a plain httpx transport).
        telemetry: spans and metrics; none when omitted.
        pools: the mesh's shared connection pools (:mod:`meshlib.transport.pools`);
            without them the transport keeps pools of its own, closed with it.
    """

    def __init__(
        self,
        *,
        view: ViewSource,
        tls: ContextSource,
        outside: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        telemetry: MeshTelemetry | None = None,
        pools: MeshPools | None = None,
    ) -> None:
        super().__init__(view=view, clock=clock, telemetry=telemetry)
        self._tls = tls
        # Built on first use: a default httpx transport loads the system CA store (~20 ms),
        # which a client made per request must not pay when it only calls mesh services.
        self._outside = outside
        self._shared = pools
        self._pools: dict[tuple[str, int], AsyncIdentityTransport] = {}
        self._mirrors: set[asyncio.Task[None]] = set()

    async def _pool(self, destination: Destination) -> AsyncIdentityTransport:
        # Keyed by pool size too, so a maxConnections update takes effect on open clients.
        key = destination.pool_key
        shared = self._shared
        if shared is not None:
            pool = shared.async_pool(key)
            if pool is None:
                service = destination.service
                pool = await shared.new_async_pool(key, service.dns_name, service.external)
            return pool
        pool = self._pools.get(key)
        if pool is None:
            service = destination.service
            pool = self._pools[key] = AsyncIdentityTransport(
                expected=service.spiffe_id,
                tls=self._tls,
                sni=service.dns_name,
                max_connections=service.connection_pool.max_connections,
                external=service.external,
            )
        return pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        call = self._start(request)
        if call is None:
            if self._outside is None:
                self._outside = httpx.AsyncHTTPTransport()
            return await self._outside.handle_async_request(request)
        if self._telemetry is None:
            return await self._run(call)
        response: httpx.Response | None = None
        error: BaseException | None = None
        try:
            response = await self._run(call)
            return response
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._finish(call, response, error)

    async def _run(self, call: HttpCall) -> httpx.Response:
        driver = call.driver
        pool = await self._pool(call.destination)
        try:
            action = driver.begin()
            while True:  # bounded: the driver allows at most 1 + retries.attempts tries
                if action == SLEEP:
                    await asyncio.sleep(driver.delay)
                    action = driver.resume()
                    continue
                if action == ABORT:
                    return call.fault_response()
                if driver.attempts == 1:
                    self._mirror(call, pool)
                try:
                    request = call.attempt_request()
                    response = await pool.send_to(request, *call.target(), call.extra_headers)
                except Exception as exc:
                    action = call.on_error(exc)
                    continue
                action = call.on_response(response)
                if action == DONE:
                    return call.finish(response)
                await response.aread()  # read to the end: the connection goes back to the pool
        finally:
            driver.close()

    def _mirror(self, call: HttpCall, pool: AsyncIdentityTransport) -> None:
        target = call.mirror_target()
        if target is None or len(self._mirrors) >= MIRROR_MAX_IN_FLIGHT:
            return
        endpoint, copy = target

        async def send() -> None:
            with contextlib.suppress(Exception):  # a mirror never affects the caller
                response = await pool.send_to(copy, endpoint.address, endpoint.port)
                await response.aclose()

        task = asyncio.get_running_loop().create_task(send())
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    async def aclose(self) -> None:
        """Close what this transport owns; the mesh's shared pools stay open."""
        for task in list(self._mirrors):
            task.cancel()
        for pool in self._pools.values():
            await pool.aclose()
        if self._outside is not None:
            await self._outside.aclose()


class MeshTransport(_Base, httpx.BaseTransport):
    """Sync twin of :class:`AsyncMeshTransport`; mirrors run on a small thread pool."""

    def __init__(
        self,
        *,
        view: ViewSource,
        tls: ContextSource,
        outside: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        telemetry: MeshTelemetry | None = None,
        pools: MeshPools | None = None,
    ) -> None:
        super().__init__(view=view, clock=clock, telemetry=telemetry)
        self._tls = tls
        self._outside = outside  # built on first use (see AsyncMeshTransport)
        self._shared = pools
        self._pools: dict[tuple[str, int], IdentityTransport] = {}
        self._lock = threading.Lock()  # creation of per-service pools only, not per request
        self._mirror_pool: ThreadPoolExecutor | None = None
        self._mirrors_in_flight = 0

    def _pool(self, destination: Destination) -> IdentityTransport:
        if self._shared is not None:
            service = destination.service
            return self._shared.sync_pool(destination.pool_key, service.dns_name, service.external)
        pool = self._pools.get(destination.pool_key)
        if pool is None:
            with self._lock:
                pool = self._pools.get(destination.pool_key)
                if pool is None:
                    service = destination.service
                    pool = self._pools[destination.pool_key] = IdentityTransport(
                        expected=service.spiffe_id,
                        tls=self._tls,
                        sni=service.dns_name,
                        max_connections=service.connection_pool.max_connections,
                        external=service.external,
                    )
        return pool

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        call = self._start(request)
        if call is None:
            if self._outside is None:
                with self._lock:
                    if self._outside is None:
                        self._outside = httpx.HTTPTransport()
            return self._outside.handle_request(request)
        response: httpx.Response | None = None
        error: BaseException | None = None
        try:
            response = self._run(call)
            return response
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._finish(call, response, error)

    def _run(self, call: HttpCall) -> httpx.Response:
        driver = call.driver
        pool = self._pool(call.destination)
        try:
            action = driver.begin()
            while True:  # bounded: the driver allows at most 1 + retries.attempts tries
                if action == SLEEP:
                    time.sleep(driver.delay)
                    action = driver.resume()
                    continue
                if action == ABORT:
                    return call.fault_response()
                if driver.attempts == 1:
                    self._mirror(call, pool)
                try:
                    request = call.attempt_request()
                    response = pool.send_to(request, *call.target(), call.extra_headers)
                except Exception as exc:
                    action = call.on_error(exc)
                    continue
                action = call.on_response(response)
                if action == DONE:
                    return call.finish(response)
                response.read()  # read to the end: the connection goes back to the pool
        finally:
            driver.close()

    def _mirror(self, call: HttpCall, pool: IdentityTransport) -> None:
        target = call.mirror_target()
        if target is None or self._mirrors_in_flight >= MIRROR_MAX_IN_FLIGHT:
            return
        endpoint, copy = target
        if self._mirror_pool is None:
            with self._lock:
                if self._mirror_pool is None:
                    self._mirror_pool = ThreadPoolExecutor(2, thread_name_prefix="mesh-mirror")

        def send() -> None:
            try:
                with contextlib.suppress(Exception):  # a mirror never affects the caller
                    pool.send_to(copy, endpoint.address, endpoint.port).close()
            finally:
                self._mirrors_in_flight -= 1

        self._mirrors_in_flight += 1
        self._mirror_pool.submit(send)

    def close(self) -> None:
        """Close what this transport owns; the mesh's shared pools stay open."""
        if self._mirror_pool is not None:
            self._mirror_pool.shutdown(wait=False, cancel_futures=True)
        for pool in self._pools.values():
            pool.close()
        if self._outside is not None:
            self._outside.close()
