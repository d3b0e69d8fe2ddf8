"""The sync and aio gRPC server interceptors: thin adapters of the inbound admission.

Each call: start the server telemetry, decide with
:func:`~meshlib.integrations.grpc_server_admission.admit` (the admission of the active
snapshot, built once per snapshot), abort with the refusal's status, details and trailing
metadata, or run the handler with the caller published
(:func:`meshlib.integrations.grpc.current_peer`) and its deadline ambient; finish the
telemetry. One ``with`` block (:class:`_Served`) does all of
that for the four handler kinds of both flavours, which differ only in how they await.
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
from meshlib.integrations.grpc_server_admission import admit, deadline_of, enter, exit_call
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


def _method_name(details: Any) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


class _Served:
    """One served call, as a ``with`` block: its telemetry, admission and published peer.

    :meth:`admit` decides (a refusal is recorded and returned for the flavour to abort with);
    leaving the block unpublishes the peer and finishes the telemetry with the call's
    code. Both flavours, unary and streaming, use it the same way.
    """

    __slots__ = ("_call", "_context", "_peer", "_tokens")

    def __init__(self, mesh: Any, method: str, context: Any) -> None:
        self._context = context
        self._peer: str | None = None
        self._tokens: Tokens | None = None
        self._call = _start(mesh, method, context)

    def admit(self, gate: _Gate, method: str) -> tuple[Any, str] | None:
        """Decide. A refusal sets its trailing metadata, is recorded with its code, and
        ``context.abort``'s arguments are returned for the flavour to abort with."""
        try:
            decision = gate.decide(method, self._context)
        except BaseException as exc:  # not a decision: the call ends here
            self.__exit__(type(exc), exc, None)
            raise
        if isinstance(decision, Refusal):
            self._context.set_trailing_metadata(decision.grpc_metadata)
            call, self._call = self._call, None
            if call is not None:
                call.finish(code=decision.grpc_code, peer=None, flag=decision.flag)
            return grpc.StatusCode[decision.grpc_code], decision.grpc_details
        self._peer = decision.peer
        self._tokens = enter(decision)
        return None

    def __enter__(self) -> _Served:
        return self

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        if self._tokens is not None:
            exit_call(self._tokens)
            self._tokens = None
        if self._call is not None:
            _finish(self._call, self._context, error, self._peer)


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


def _finish(call: ServerCall, context: Any, error: BaseException | None, peer: str | None) -> None:
    try:
        code = context.code()
        if code is None:
            code = grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    except Exception:
        name = "UNKNOWN"
    call.finish(code=name, peer=peer)


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
            context.invocation_metadata(),
        )


def _shape(handler: Any, details: Any) -> tuple[str, str, bool]:
    """The call's method, the handler's behaviour field, and whether it answers once."""
    for field in ("unary_unary", "stream_unary", "unary_stream", "stream_stream"):
        if getattr(handler, field) is not None:
            return _method_name(details), field, field.endswith("_unary")
    raise ValueError("a gRPC method handler without a behaviour")


class MeshServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Enforce the inbound policy on every call of a sync ``grpc.server``.

    Args:
        mesh: holds the active policy engine (normally the :class:`meshlib.Mesh`).
    """

    def __init__(self, mesh: MeshLike) -> None:
        self._mesh = mesh
        self._gate = _Gate(mesh)

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method, field, unary_response = _shape(handler, handler_call_details)
        gate, mesh, behavior = self._gate, self._mesh, getattr(handler, field)

        def served(context: Any) -> _Served:
            call = _Served(mesh, method, context)
            refused = call.admit(gate, method)
            if refused is not None:
                context.abort(*refused)  # raises
            return call

        def unary(request: Any, context: Any) -> Any:
            with served(context):
                return behavior(request, context)

        def streaming(request: Any, context: Any) -> Iterator[Any]:
            with served(context):
                yield from behavior(request, context)

        return handler._replace(**{field: unary if unary_response else streaming})


class AsyncMeshServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Enforce the inbound policy on every call of a ``grpc.aio.server``.

    Handlers may be coroutines, async generators, or coroutines writing with
    ``context.write``; sync handlers are accepted as grpc.aio accepts them.
    """

    def __init__(self, mesh: MeshLike) -> None:
        self._mesh = mesh
        self._gate = _Gate(mesh)

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method, field, unary_response = _shape(handler, handler_call_details)
        gate, mesh, behavior = self._gate, self._mesh, getattr(handler, field)

        async def served(context: Any) -> _Served:
            call = _Served(mesh, method, context)
            refused = call.admit(gate, method)
            if refused is not None:
                await context.abort(*refused)  # raises
            return call

        async def unary(request: Any, context: Any) -> Any:
            with await served(context):
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            with await served(context):
                result = behavior(request, context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                elif inspect.isawaitable(result):
                    await result  # the handler writes with context.write()
                elif result is not None:
                    for item in result:
                        yield item

        return handler._replace(**{field: unary if unary_response else streaming})
