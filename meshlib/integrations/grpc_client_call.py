"""What a gRPC call adds to the call driver: metadata, deadline, outcomes, telemetry.

Shared by the sync and aio channels, which only send and sleep. The decisions — fault,
admission, endpoint, per-try timeout, retry, backoff, budget — are the
:class:`~meshlib.traffic.driver.CallDriver`'s, over the destination's
:class:`~meshlib.traffic.runtime.ServiceRuntime`, the same one HTTP calls to that service
use (one budget, one breaker per endpoint, one outlier view, one pool admission). Spans
and metrics are :mod:`meshlib.telemetry.client`'s, as for the httpx clients.
"""

from __future__ import annotations

import contextlib
import fnmatch
import random
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import grpc  # type: ignore[import-untyped]

from meshlib.errors import FaultInjected, RequestError, RetryBudgetExhausted, UnknownServiceError
from meshlib.identity.tls import TLSContexts
from meshlib.integrations.grpc_client_channels import SubChannels
from meshlib.integrations.grpc_client_outcomes import (
    GRPC_METHOD,
    OK,
    BudgetExhaustedRpcError,
    MeshRpcError,
    code_of,
    grpc_code,
    note_outcome,
    rpc_error,
)
from meshlib.policy.model import DEFAULT_TIMEOUT
from meshlib.resilience import deadline as _deadline
from meshlib.resilience.fault import NO_FAULT, decide_fault
from meshlib.resilience.retry import is_retry_safe
from meshlib.runtime.view import ActiveView, Destination
from meshlib.telemetry.client import ClientCall, passthrough_headers, start_client_call
from meshlib.telemetry.metrics import MeshTelemetry
from meshlib.traffic.driver import ABORT, DONE, SLEEP, CallDriver

__all__ = [
    "CALL_OPTIONS",
    "Core",
    "Factories",
    "GrpcCall",
    "MeshLike",
    "Multi",
    "call_kwargs",
    "replayable",
]


class MeshLike(Protocol):
    """What the channels need of :class:`meshlib.Mesh`."""

    @property
    def view(self) -> ActiveView: ...

    @property
    def tls(self) -> TLSContexts: ...


class Core:
    """What both channel flavours share: the service name, sub-channels, idempotency."""

    def __init__(
        self,
        service: str,
        mesh: MeshLike,
        subchannels: SubChannels,
        idempotent_methods: Iterable[str],
    ) -> None:
        self.service_name = service
        self.mesh = mesh
        self.subchannels = subchannels
        self.telemetry: MeshTelemetry | None = getattr(mesh, "telemetry", None)
        self._swept: object = None
        patterns = tuple(idempotent_methods)
        self._idempotent = {p for p in patterns if "*" not in p}
        self._idempotent_globs = tuple(p for p in patterns if "*" in p)

    def destination(self) -> Destination:
        """The service in the active view; retires channels to departed endpoints."""
        view = self.mesh.view
        destination = view.resolve(self.service_name)
        if destination is None:
            raise UnknownServiceError(self.service_name)
        if view is not self._swept:  # a new view was installed: channel bookkeeping only
            self._swept = view
            self.subchannels.sweep(destination.service)
        return destination

    def is_idempotent(self, method: str) -> bool:
        if method in self._idempotent:
            return True
        return any(fnmatch.fnmatchcase(method, p) for p in self._idempotent_globs)


CALL_OPTIONS = frozenset({"credentials", "wait_for_ready", "compression"})
"""The per-call keyword arguments of gRPC's multi-callables besides timeout and metadata."""


def call_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """The per-call options a caller actually gave (None values dropped).

    Raises:
        TypeError: an option gRPC's multi-callables do not take.
    """
    unknown = options.keys() - CALL_OPTIONS
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    return {key: value for key, value in options.items() if value is not None}


_MAX_MADE = 64
"""Per-endpoint multi-callables one meshed multi-callable keeps (one per channel)."""


class Multi:
    """What the sync and aio multi-callables share: the call's method and codecs."""

    def __init__(self, core: Core, kind: str, method: str, ser: Any, de: Any) -> None:
        self._core = core
        self._kind = kind
        self._method = method
        self._ser = ser
        self._de = de
        self._made: dict[int, tuple[Any, Any]] = {}  # id(channel) -> (channel, callable)

    def _inner(self, channel: Any) -> Any:
        """The real multi-callable of this kind on a per-endpoint *channel* (made once)."""
        made = self._made.get(id(channel))
        if made is not None and made[0] is channel:
            return made[1]
        inner = getattr(channel, self._kind)(
            self._method,
            request_serializer=self._ser,
            response_deserializer=self._de,
            _registered_method=True,
        )
        if len(self._made) >= _MAX_MADE:  # endpoints come and go: forget them all at once
            self._made.clear()
        self._made[id(channel)] = (channel, inner)
        return inner


def replayable(request: Any, limit: int) -> bool:
    """Whether a unary request is within ``maxReplayBytes`` (its protobuf size).

    A request of unknown size (not a protobuf message) counts as replayable: the caller
    holds it whole anyway.
    """
    size = getattr(request, "ByteSize", None)
    if not callable(size):
        return True
    try:
        return int(size()) <= limit
    except Exception:
        return True


def _factory(kind: str) -> Callable[..., Any]:
    def make(
        self: Any,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return self.multi_callable(kind, method, request_serializer, response_deserializer)

    make.__name__ = make.__qualname__ = kind
    make.__doc__ = f"The ``{kind}`` multi-callable of *method* (``/pkg.Service/Method``)."
    return make


class Factories:
    """The four multi-callable factories of a ``grpc.Channel`` / ``grpc.aio.Channel``.

    A channel flavour defines :meth:`multi_callable`; the signatures are gRPC's.
    """

    def multi_callable(self, kind: str, method: str, ser: Any, de: Any) -> Any:
        raise NotImplementedError

    unary_unary = _factory("unary_unary")
    unary_stream = _factory("unary_stream")
    stream_unary = _factory("stream_unary")
    stream_stream = _factory("stream_stream")


class GrpcCall:
    """One logical gRPC call: its driver, metadata and telemetry."""

    __slots__ = ("core", "destination", "driver", "metadata", "method", "telemetry")

    def __init__(
        self,
        core: Core,
        method: str,
        metadata: Any,
        timeout: float | None,
        streaming: bool,
        request: Any = None,
    ) -> None:
        destination = core.destination()
        service = destination.service
        md = tuple(metadata or ())
        headers = {str(k).lower(): v for k, v in md if isinstance(v, str)}
        plan = service.route(GRPC_METHOD, method, headers)
        self.core = core
        self.destination = destination
        self.method = method
        now = time.monotonic()
        route_timeout = plan.timeout
        if route_timeout is None and timeout is None and not streaming:
            route_timeout = DEFAULT_TIMEOUT
        deadline = _deadline.effective_deadline(route_timeout, now)
        if timeout is not None:
            deadline = now + timeout if deadline is None else min(deadline, now + timeout)
        fault = decide_fault(plan.fault) if plan.fault_applies(headers) else NO_FAULT
        retries = plan.retries
        safe = core.is_idempotent(method) or is_retry_safe(GRPC_METHOD, headers, retries)
        if safe and retries.attempts > 0 and not streaming:
            safe = replayable(request, retries.max_replay_bytes)
        self.driver = CallDriver(
            destination.runtime,
            plan,
            retry_safe=safe,
            deadline=deadline,
            fault=fault,
            retries=not streaming,
        )
        self.telemetry: ClientCall | None = None
        telemetry = core.telemetry
        if telemetry is not None:
            call = self.telemetry = start_client_call(
                telemetry,
                protocol="grpc",
                service=service.key,
                method=method,
                route=plan.name,
                peer_spiffe_id=service.spiffe_id,
                fault_delay=fault.delay,
                fault_abort=fault.abort_grpc,
            )
            if call.trace_headers:
                md = md + tuple(call.trace_headers.items())
        else:
            # Without telemetry, pass on the trace and baggage of the call being served.
            with contextlib.suppress(Exception):
                carrier = passthrough_headers()
                if carrier:
                    md = md + tuple(carrier.items())
        self.metadata = md

    # ------------------------------------------------------------------ the loop's steps

    def begin(self) -> int:
        """The driver's first action.

        Mesh refusals are raised as :class:`meshlib.integrations.grpc.MeshRpcError`.
        """
        try:
            return self.driver.begin()
        except RequestError as exc:
            raise rpc_error(exc) from exc

    def resume(self) -> int:
        """The driver's action after a sleep.

        Mesh refusals are raised as :class:`meshlib.integrations.grpc.MeshRpcError`.
        """
        try:
            return self.driver.resume()
        except RequestError as exc:
            raise rpc_error(exc) from exc

    def start_once(self, sleep: Callable[[float], None] | None) -> tuple[float, Any]:
        """Start a call that makes one try (a stream, a future): fault delay and abort.

        The fault delay is slept with *sleep* before the endpoint is picked, or, without
        *sleep*, returned for the caller to apply before the first read. Returns
        ``(delay still to apply, the abort's error or None)``; mesh refusals are raised.
        The call is finished here when it ends before its try.
        """
        delay = 0.0
        try:
            action = self.begin()
            if action == SLEEP:
                delay = self.driver.delay
                if sleep is not None:
                    sleep(delay)
                    delay = 0.0
                action = self.resume()
        except BaseException as exc:
            self.failed(exc)
            raise
        if action != ABORT:
            return delay, None
        error = self.fault_error()
        self.failed(error)
        return delay, error

    def on_error(self, error: Any, began: float) -> int:
        """The next action after a failed try; raises the call's error when done.

        That is *error* itself, or a
        :class:`meshlib.integrations.grpc.BudgetExhaustedRpcError` wrapping it when the
        retry budget refused the retry.
        """
        driver = self.driver
        try:
            action = driver.observe(note_outcome(error, driver.timeout, began))
        except RequestError as exc:  # the next try found no endpoint, or no time
            raise rpc_error(exc) from exc
        if action != DONE:
            return action
        if driver.budget_exhausted:
            name = driver.runtime.name
            refused = RetryBudgetExhausted(
                f"{name}: retry budget exhausted after {driver.attempts} attempt(s); "
                f"last error: {code_of(error).name}",
                service=name,
            )
            raise BudgetExhaustedRpcError(error, refused) from error
        raise error

    def on_ok(self) -> None:
        """The try succeeded."""
        self.driver.observe(OK)

    def ended(self, code: Any, rpc: Any, began: float) -> None:
        """A stream or future ended with *code*: count its outcome, finish the call."""
        if code == grpc.StatusCode.OK:
            self.driver.observe(OK)
        else:
            self.driver.observe(note_outcome(rpc, self.driver.timeout, began))
        self.finish(code)

    def channel(self) -> Any:
        """The per-endpoint channel of the driver's current try."""
        driver = self.driver
        endpoint = driver.endpoint
        assert endpoint is not None  # set by every ATTEMPT action
        if driver.attempts > 1 and self.telemetry is not None:
            self.telemetry.retrying(attempt=driver.attempts, endpoint=endpoint.authority)
        return self.core.subchannels.get(endpoint.authority, self.destination.service.dns_name)

    def mirror_channel(self) -> Any:
        """The channel to send this call's shadow copy to, or None (first try only)."""
        driver = self.driver
        if driver.plan.mirror is None or driver.attempts != 1:
            return None
        endpoint = driver.mirror_endpoint(random.random())
        if endpoint is None:
            return None
        return self.core.subchannels.get(endpoint.authority, self.destination.service.dns_name)

    def fault_error(self) -> MeshRpcError:
        """The error of a fault abort."""
        fault = self.driver.fault
        err = FaultInjected(
            f"fault injected by route {self.driver.plan.name}",
            service=self.destination.service.key,
        )
        return MeshRpcError(grpc_code(fault.abort_grpc or 2), err)

    # ------------------------------------------------------------------ the end

    def failed(self, exc: BaseException) -> None:
        """Finish the call with the exception it ended with; never raises."""
        if isinstance(exc, MeshRpcError):
            self.finish(exc.code(), exc.mesh_error, exc.mesh_error.flag)
        elif isinstance(exc, grpc.RpcError):
            self.finish(code_of(exc))
        else:
            self.finish(grpc.StatusCode.UNKNOWN, exc)

    def finish(
        self, code: Any, error: BaseException | None = None, flag: str | None = None
    ) -> None:
        """End the call: release its admission, end its span, record it; idempotent."""
        self.driver.close()
        call = self.telemetry
        if call is None:
            return
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        call.finish(code=name, error=error, attempts=self.driver.attempts, flag=flag)
