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
6. retry unary-request calls by the route's retry policy and the service's retry budget
   (:mod:`meshlib.resilience.retry`). Streams are never retried.

gRPC outcomes are read as the HTTP outcomes the policy speaks of (so ``retryOn`` and
breakers mean the same thing for both)::

    UNAVAILABLE, no connection could be made     connect-failure  (retried for any method:
                                                                   nothing was sent)
    UNAVAILABLE, the connection broke            reset
    UNAVAILABLE otherwise                        503
    DEADLINE_EXCEEDED of a per-try timeout       timeout
    INTERNAL, UNKNOWN, DATA_LOSS                 500
    RESOURCE_EXHAUSTED 429, UNIMPLEMENTED 501, other codes 4xx (never failures)

Every gRPC call is a POST, so only connect failures are retried unless the method is
marked idempotent (``idempotent_methods=``), the call carries ``idempotency-key``
metadata, or the route sets ``allowNonIdempotent``.

The decisions of a call are the call driver's (:mod:`meshlib.traffic.driver`), over the
destination's runtime shared with HTTP calls; this module and
:mod:`meshlib.integrations.grpc_client_aio` only send and sleep
(:mod:`meshlib.integrations.grpc_client_call` maps the rest). Pool limits (admission),
locality, mirroring (unary-unary calls), fault delay and abort and outlier detection act
on gRPC calls as on HTTP ones.

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
from meshlib.integrations.grpc_client_call import Core, GrpcCall, MeshLike, call_kwargs
from meshlib.integrations.grpc_client_channels import SubChannels, retire_later
from meshlib.integrations.grpc_client_outcomes import (
    DEFAULT_GRACE,
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
    "MeshChannel",
    "MeshLike",
    "MeshRpcError",
    "current_deadline",
    "outcome_of",
]


class _SyncMulti:
    def __init__(self, core: Core, kind: str, method: str, ser: Any, de: Any) -> None:
        self._core = core
        self._kind = kind
        self._method = method
        self._ser = ser
        self._de = de

    def _inner(self, channel: Any, kind: str | None = None) -> Any:
        return getattr(channel, kind or self._kind)(
            self._method,
            request_serializer=self._ser,
            response_deserializer=self._de,
            _registered_method=True,
        )

    def _stream(
        self, request: Any, timeout: float | None, metadata: Any, future: bool = False, **kw: Any
    ) -> Any:
        """One try, no retry (a stream or future cannot be re-sent); recorded when it ends."""
        call = GrpcCall(self._core, self._method, metadata, timeout, streaming=True)
        try:
            action = call.begin()
            if action == SLEEP:
                time.sleep(call.driver.delay)
                action = call.resume()
            if action == ABORT:
                raise call.fault_error()
        except BaseException:
            call.finish("UNKNOWN")
            raise
        factory = self._inner(call.channel())
        if future or self._kind == "stream_unary":  # its __call__ blocks: take the future
            factory = factory.future
        began = time.monotonic()
        inner = factory(request, timeout=call.driver.timeout, metadata=call.metadata or None, **kw)

        inner.add_done_callback(lambda rpc: call.ended(rpc.code(), rpc, began))
        return inner

    def _unary(self, request: Any, timeout: float | None, metadata: Any, **kw: Any) -> Any:
        """A unary-request call with retries; returns ``(response, grpc.Call)``."""
        call = GrpcCall(self._core, self._method, metadata, timeout, streaming=False)
        try:
            result = self._unary_call(call, request, **kw)
        except grpc.RpcError as exc:
            call.finish(exc.code())
            raise
        except BaseException:
            call.finish("UNKNOWN")
            raise
        call.finish(grpc.StatusCode.OK)
        return result

    def _unary_call(self, call: GrpcCall, request: Any, **kw: Any) -> Any:
        driver = call.driver
        action = call.begin()
        while True:  # bounded: the driver allows at most 1 + retries.attempts tries
            if action == SLEEP:
                time.sleep(driver.delay)
                action = call.resume()
                continue
            if action == ABORT:
                raise call.fault_error()
            if driver.attempts == 1 and self._kind == "unary_unary":
                self._mirror(call, request, kw)
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

    def _mirror(self, call: GrpcCall, request: Any, kw: dict[str, Any]) -> None:
        channel = call.mirror_channel() if call.driver.plan.mirror is not None else None
        if channel is None:
            return
        with contextlib.suppress(Exception):  # a mirror never affects the caller
            shadow = self._inner(channel).future(
                request, timeout=call.driver.timeout, metadata=call.metadata or None, **kw
            )
            shadow.add_done_callback(lambda rpc: None)


class _UnaryUnary(_SyncMulti, grpc.UnaryUnaryMultiCallable):  # type: ignore[misc]
    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        kw = call_kwargs(credentials, wait_for_ready, compression)
        return self._unary(request, timeout, metadata, **kw)[0]

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        kw = call_kwargs(credentials, wait_for_ready, compression)
        return self._unary(request, timeout, metadata, **kw)

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        """One try, no retry (a future cannot be re-sent); otherwise as ``__call__``."""
        kw = call_kwargs(credentials, wait_for_ready, compression)
        return self._stream(request, timeout, metadata, future=True, **kw)


class _UnaryStream(_SyncMulti, grpc.UnaryStreamMultiCallable):  # type: ignore[misc]
    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        kw = call_kwargs(credentials, wait_for_ready, compression)
        return self._stream(request, timeout, metadata, **kw)


class _StreamUnary(_SyncMulti, grpc.StreamUnaryMultiCallable):  # type: ignore[misc]
    def __call__(
        self,
        request_iterator: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self.future(
            request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        ).result()

    def with_call(
        self,
        request_iterator: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        fut = self.future(
            request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        )
        return fut.result(), fut

    def future(
        self,
        request_iterator: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        kw = call_kwargs(credentials, wait_for_ready, compression)
        return self._stream(request_iterator, timeout, metadata, **kw)


class _StreamStream(_SyncMulti, grpc.StreamStreamMultiCallable):  # type: ignore[misc]
    def __call__(
        self,
        request_iterator: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        kw = call_kwargs(credentials, wait_for_ready, compression)
        return self._stream(request_iterator, timeout, metadata, **kw)


class MeshChannel(grpc.Channel):  # type: ignore[misc]
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

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _UnaryUnary(
            self._core, "unary_unary", method, request_serializer, response_deserializer
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _UnaryStream(
            self._core, "unary_stream", method, request_serializer, response_deserializer
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _StreamUnary(
            self._core, "stream_unary", method, request_serializer, response_deserializer
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _StreamStream(
            self._core, "stream_stream", method, request_serializer, response_deserializer
        )

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
