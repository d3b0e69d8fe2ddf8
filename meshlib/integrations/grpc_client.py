"""Meshed gRPC channels: one logical channel per service, one real channel per endpoint.

:class:`MeshChannel` (sync) and :class:`AsyncMeshChannel` (grpc.aio) are real
``grpc.Channel`` / ``grpc.aio.Channel`` objects, so generated stubs take them as they are.
Per call they

1. resolve the service in the active snapshot (one attribute read) and route the call as
   ``POST /pkg.Service/Method`` (headers are the call's metadata);
2. compute the deadline: the tightest of the call's ``timeout``, the route's ``timeout``
   and the deadline of the call being served (:func:`current_deadline`); unary calls with
   none of them get ``DEFAULT_TIMEOUT``, as HTTP calls do. gRPC carries it on the wire
   (``grpc-timeout``), so the next hop sees what is left;
3. apply the route's fault (delay, abort);
4. pick a weighted backend, then an endpoint with the service's load balancer, skipping
   open circuit breakers (and, for a retry, endpoints already tried when others remain);
5. send over a cached ``grpc.secure_channel`` to that endpoint with the current SVID, the
   bundle as roots, and ``grpc.ssl_target_name_override`` set to the service's DNS SAN
   ``<svc>.<ns>.svc.<td>``: gRPC's host-name check is the server-identity check (the CA
   issues that DNS SAN only together with the matching SPIFFE ID);
6. retry unary-unary calls by the route's retry policy (``maxReplayBytes`` against the
   request's protobuf size) and the service's retry budget
   (:mod:`meshlib.resilience.retry`). Streams and futures make one try.

gRPC outcomes are read as the HTTP outcomes the policy speaks of, so ``retryOn``, breakers
and outlier detection mean the same for both (the table is in
:mod:`meshlib.integrations.grpc_client_outcomes`); a connect failure is retried for any
method, as nothing was sent.

Every gRPC call is a POST, so only connect failures are retried unless the method is
marked idempotent (``idempotent_methods=``), the call carries ``idempotency-key``
metadata, or the route sets ``allowNonIdempotent``.

The decisions of a call are the call driver's (:mod:`meshlib.traffic.driver`), over the
destination's runtime shared with HTTP calls; this module and
:mod:`meshlib.integrations.grpc_client_aio` only send and sleep
(:mod:`meshlib.integrations.grpc_client_call` maps the rest, and records the call with
:mod:`meshlib.telemetry.client`). Pool limits (admission), locality, mirroring
(unary-unary calls), fault delay and abort and outlier detection act on gRPC calls as on
HTTP ones. When the retry budget refuses a retry, the last try's error is raised as a
:class:`BudgetExhaustedRpcError` (its code and details, plus ``x-mesh-flag:
RETRY_BUDGET_EXHAUSTED``).

Sub-channels follow the mesh: a rotated SVID makes new calls build new channels while the
old ones are closed after ``grace`` seconds; endpoints that leave the snapshot are closed
the same way.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from meshlib.integrations.grpc_client_aio import AsyncMeshChannel
from meshlib.integrations.grpc_client_call import (
    Core,
    Factories,
    GrpcCall,
    MeshLike,
    Multi,
    call_kwargs,
)
from meshlib.integrations.grpc_client_channels import SubChannels, retire_later
from meshlib.integrations.grpc_client_outcomes import (
    DEFAULT_GRACE,
    BudgetExhaustedRpcError,
    MeshRpcError,
    current_deadline,
    outcome_of,
)
from meshlib.traffic.driver import ABORT, SLEEP

try:
    import grpc  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("meshlib's gRPC needs grpcio: pip install 'inproc-mesh[grpc]'") from exc

__all__ = [
    "DEFAULT_GRACE",
    "AsyncMeshChannel",
    "BudgetExhaustedRpcError",
    "MeshChannel",
    "MeshLike",
    "MeshRpcError",
    "current_deadline",
    "outcome_of",
]


class _SyncMulti(Multi):
    """A sync multi-callable of any kind; the four gRPC classes below only name the kind.

    Unary-unary ``__call__`` and ``with_call`` retry; streams and futures make one try.
    ``options`` are gRPC's ``credentials``, ``wait_for_ready`` and ``compression``.
    """

    def __call__(
        self, request: Any, timeout: float | None = None, metadata: Any = None, **options: Any
    ) -> Any:
        kw = call_kwargs(options)
        if self._kind == "unary_unary":
            return self._unary(request, timeout, metadata, kw)[0]
        if self._kind == "stream_unary":
            return self._once(request, timeout, metadata, kw).result()
        return self._once(request, timeout, metadata, kw)

    def with_call(
        self, request: Any, timeout: float | None = None, metadata: Any = None, **options: Any
    ) -> Any:
        """``(response, grpc.Call)``; unary-request kinds only."""
        kw = call_kwargs(options)
        if self._kind == "unary_unary":
            return self._unary(request, timeout, metadata, kw)
        future = self._once(request, timeout, metadata, kw)
        return future.result(), future

    def future(
        self, request: Any, timeout: float | None = None, metadata: Any = None, **options: Any
    ) -> Any:
        """One try, no retry (a future cannot be re-sent); unary-request kinds only."""
        return self._once(request, timeout, metadata, call_kwargs(options), future=True)

    def _once(
        self, request: Any, timeout: float | None, metadata: Any, kw: Any, future: bool = False
    ) -> Any:
        """One try, no retry (a stream or future cannot be re-sent); recorded when it ends."""
        call = GrpcCall(self._core, self._method, metadata, timeout, streaming=True)
        _, error = call.start_once(time.sleep)
        if error is not None:
            raise error
        factory = self._inner(call.channel())
        if future or self._kind == "stream_unary":  # its __call__ blocks: take the future
            factory = factory.future
        began = time.monotonic()
        inner = factory(request, timeout=call.driver.timeout, metadata=call.metadata or None, **kw)
        inner.add_done_callback(lambda rpc: call.ended(rpc.code(), rpc, began))
        return inner

    def _unary(self, request: Any, timeout: float | None, metadata: Any, kw: Any) -> Any:
        """A unary-unary call with retries; returns ``(response, grpc.Call)``."""
        call = GrpcCall(self._core, self._method, metadata, timeout, False, request)
        try:
            result = self._tries(call, request, kw)
        except BaseException as exc:
            call.failed(exc)
            raise
        call.finish(grpc.StatusCode.OK)
        return result

    def _tries(self, call: GrpcCall, request: Any, kw: Any) -> Any:
        driver = call.driver
        action = call.begin()
        while True:  # bounded: the driver allows at most 1 + retries.attempts tries
            if action == SLEEP:
                time.sleep(driver.delay)
                action = call.resume()
                continue
            if action == ABORT:
                raise call.fault_error()
            mirror = call.mirror_channel()
            if mirror is not None:
                self._mirror(mirror, call, request, kw)
            began = time.monotonic()
            try:
                result = self._inner(call.channel()).with_call(
                    request, timeout=driver.timeout, metadata=call.metadata or None, **kw
                )
            except grpc.RpcError as exc:
                action = call.on_error(exc, began)
                continue
            call.on_ok()
            return result

    def _mirror(self, channel: Any, call: GrpcCall, request: Any, kw: Any) -> None:
        with contextlib.suppress(Exception):  # a mirror never affects the caller
            shadow = self._inner(channel).future(
                request, timeout=call.driver.timeout, metadata=call.metadata or None, **kw
            )
            shadow.add_done_callback(lambda rpc: None)


class _UnaryUnary(_SyncMulti, grpc.UnaryUnaryMultiCallable):  # type: ignore[misc]
    pass


class _UnaryStream(_SyncMulti, grpc.UnaryStreamMultiCallable):  # type: ignore[misc]
    pass


class _StreamUnary(_SyncMulti, grpc.StreamUnaryMultiCallable):  # type: ignore[misc]
    pass


class _StreamStream(_SyncMulti, grpc.StreamStreamMultiCallable):  # type: ignore[misc]
    pass


_KINDS: dict[str, type[_SyncMulti]] = {
    "unary_unary": _UnaryUnary,
    "unary_stream": _UnaryStream,
    "stream_unary": _StreamUnary,
    "stream_stream": _StreamStream,
}


class MeshChannel(Factories, grpc.Channel):  # type: ignore[misc]
    """A sync ``grpc.Channel`` to a mesh service; hand it to a generated stub.

    Args:
        service: the service name (``inventory``, ``inventory.ns``…).
        mesh: the started :class:`meshlib.Mesh`.
        options: extra channel options for every per-endpoint channel.
        idempotent_methods: ``/pkg.Service/Method`` names (``*`` globs allowed) that may
            be retried on any retryable outcome.
        grace: seconds a replaced per-endpoint channel keeps running its calls.
    """

    def __init__(
        self,
        service: str,
        *,
        mesh: MeshLike,
        options: Sequence[tuple[str, Any]] = (),
        idempotent_methods: Iterable[str] = (),
        grace: float = DEFAULT_GRACE,
    ) -> None:
        subchannels = SubChannels(
            tls=mesh.tls,
            make=lambda target, creds, opts: grpc.secure_channel(target, creds, options=opts),
            retire=retire_later(grace),
            options=options,
        )
        self._core = Core(service, mesh, subchannels, idempotent_methods)

    def multi_callable(self, kind: str, method: str, ser: Any, de: Any) -> Any:
        return _KINDS[kind](self._core, kind, method, ser, de)

    def subscribe(self, callback: Callable[[Any], None], try_to_connect: bool = False) -> None:
        """Not supported: connectivity belongs to the per-endpoint channels."""
        raise NotImplementedError("a meshed channel has no single connectivity state")

    def unsubscribe(self, callback: Callable[[Any], None]) -> None:
        raise NotImplementedError("a meshed channel has no single connectivity state")

    def close(self) -> None:
        """Close every per-endpoint channel (calls in flight are cancelled)."""
        for channel in self._core.subchannels.drain():
            channel.close()

    def __enter__(self) -> MeshChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
