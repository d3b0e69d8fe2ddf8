"""The sync and aio gRPC server interceptors: thin adapters of the inbound admission.

Each call: start the server telemetry, decide with
:func:`~meshlib.integrations.grpc_server_admission.admit` (the admission of the active
snapshot, built once per snapshot), abort with the refusal's status, details and trailing
metadata, or run the handler with the caller published (:func:`current_peer`) and its
deadline ambient; finish the telemetry. The sync and aio flavours differ only in how they
await.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Protocol

from meshlib.identity.tls import TLSContexts
from meshlib.inbound.cache import AdmissionSource
from meshlib.inbound.peer import PeerInfo
from meshlib.inbound.refusal import Refusal
from meshlib.integrations.grpc_server_admission import (
    admit,
    deadline_of,
    enter,
    exit_call,
    peer_id,
)
from meshlib.policy.engine import PolicyEngine
from meshlib.telemetry.server import ServerCall, propagation_fields, start_server_call

try:
    import grpc  # type: ignore[import-untyped]
    import grpc.aio  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("meshlib's gRPC needs grpcio: pip install 'inproc-mesh[grpc]'") from exc

__all__ = ["AsyncMeshServerInterceptor", "MeshLike", "MeshServerInterceptor"]

Tokens = tuple[contextvars.Token[Any], Any]


class MeshLike(Protocol):
    """What the server side needs of :class:`meshlib.Mesh`."""

    @property
    def engine(self) -> PolicyEngine: ...

    @property
    def tls(self) -> TLSContexts: ...


def _start(mesh: Any, method: str, context: Any) -> ServerCall | None:
    telemetry = getattr(mesh, "telemetry", None)
    if telemetry is None:
        return None
    carrier: dict[str, str] | None = None
    try:
        fields = propagation_fields()
        for key, value in context.invocation_metadata() or ():
            if key in fields and isinstance(value, str):
                if carrier is None:
                    carrier = {}
                carrier[key] = value
    except Exception:  # telemetry never fails a call
        carrier = None
    return start_server_call(telemetry, protocol="grpc", method=method, carrier=carrier)


def _finish(
    call: ServerCall | None, context: Any, error: BaseException | None, peer: str | None
) -> None:
    if call is None:
        return
    try:
        code = context.code()
        if code is None:
            code = grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    except Exception:
        name = "UNKNOWN"
    call.finish(code=name, peer=peer)


def _method_name(details: Any) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


class _Gate:
    """The admission of one server's calls (shared by its handlers)."""

    __slots__ = ("_mesh", "_source")

    def __init__(self, mesh: MeshLike) -> None:
        self._mesh = mesh
        self._source = AdmissionSource(mesh)

    def decide(self, method: str, context: Any) -> PeerInfo | Refusal:
        return admit(
            self._source.get(),
            method,
            context.auth_context(),
            self._mesh.tls.peer_validator,
            deadline_of(context),
        )


class MeshServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Enforce the inbound policy on every call of a sync ``grpc.server``.

    Args:
        mesh: holds the active policy engine (normally the :class:`meshlib.Mesh`).
    """

    def __init__(self, mesh: MeshLike) -> None:
        self._mesh = mesh
        self._gate = _Gate(mesh)

    def _enter(self, method: str, context: Any) -> Tokens:
        decision = self._gate.decide(method, context)
        if isinstance(decision, Refusal):
            context.set_trailing_metadata(decision.grpc_metadata)
            context.abort(grpc.StatusCode[decision.grpc_code], decision.grpc_details)  # raises
            raise AssertionError("context.abort returned")  # pragma: no cover
        return enter(decision)

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = _method_name(handler_call_details)
        gate = self._enter
        mesh = self._mesh
        if handler.unary_unary is not None or handler.stream_unary is not None:
            field = "unary_unary" if handler.unary_unary is not None else "stream_unary"
            behavior = getattr(handler, field)

            def unary(request: Any, context: Any) -> Any:
                call = _start(mesh, method, context)
                error: BaseException | None = None
                peer: str | None = None
                try:
                    tokens = gate(method, context)
                    peer = peer_id()
                    try:
                        return behavior(request, context)
                    finally:
                        exit_call(tokens)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    _finish(call, context, error, peer)

            return handler._replace(**{field: unary})
        field = "unary_stream" if handler.unary_stream is not None else "stream_stream"
        streaming_behavior = getattr(handler, field)

        def streaming(request: Any, context: Any) -> Iterator[Any]:
            call = _start(mesh, method, context)
            error: BaseException | None = None
            peer: str | None = None
            try:
                tokens = gate(method, context)
                peer = peer_id()
                try:
                    yield from streaming_behavior(request, context)
                finally:
                    exit_call(tokens)
            except BaseException as exc:
                error = exc
                raise
            finally:
                _finish(call, context, error, peer)

        return handler._replace(**{field: streaming})


class AsyncMeshServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Enforce the inbound policy on every call of a ``grpc.aio.server``.

    Handlers may be coroutines, async generators, or coroutines writing with
    ``context.write``; sync handlers are accepted as grpc.aio accepts them.
    """

    def __init__(self, mesh: MeshLike) -> None:
        self._mesh = mesh
        self._gate = _Gate(mesh)

    async def _enter(self, method: str, context: Any) -> Tokens:
        decision = self._gate.decide(method, context)
        if isinstance(decision, Refusal):
            context.set_trailing_metadata(decision.grpc_metadata)
            await context.abort(grpc.StatusCode[decision.grpc_code], decision.grpc_details)
            raise AssertionError("context.abort returned")  # pragma: no cover
        return enter(decision)

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = _method_name(handler_call_details)
        gate = self._enter
        mesh = self._mesh
        if handler.unary_unary is not None or handler.stream_unary is not None:
            field = "unary_unary" if handler.unary_unary is not None else "stream_unary"
            behavior = getattr(handler, field)

            async def unary(request: Any, context: Any) -> Any:
                call = _start(mesh, method, context)
                error: BaseException | None = None
                peer: str | None = None
                try:
                    tokens = await gate(method, context)
                    peer = peer_id()
                    try:
                        result = behavior(request, context)
                        return await result if inspect.isawaitable(result) else result
                    finally:
                        exit_call(tokens)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    _finish(call, context, error, peer)

            return handler._replace(**{field: unary})
        field = "unary_stream" if handler.unary_stream is not None else "stream_stream"
        streaming_behavior = getattr(handler, field)

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            call = _start(mesh, method, context)
            error: BaseException | None = None
            peer: str | None = None
            try:
                tokens = await gate(method, context)
                peer = peer_id()
                try:
                    result = streaming_behavior(request, context)
                    if hasattr(result, "__aiter__"):
                        async for item in result:
                            yield item
                    elif inspect.isawaitable(result):
                        await result  # the handler writes with context.write()
                    elif result is not None:
                        for item in result:
                            yield item
                finally:
                    exit_call(tokens)
            except BaseException as exc:
                error = exc
                raise
            finally:
                _finish(call, context, error, peer)

        return handler._replace(**{field: streaming})
