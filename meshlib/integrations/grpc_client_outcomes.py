"""gRPC outcomes as the policy speaks of them, and the errors the mesh answers with.

gRPC outcomes are read as the HTTP outcomes the policy speaks of (so ``retryOn`` and
breakers mean the same thing for both)::

    UNAVAILABLE, no connection could be made     connect-failure  (retried for any method:
                                                                   nothing was sent)
    UNAVAILABLE, the connection broke            reset
    UNAVAILABLE otherwise                        503
    DEADLINE_EXCEEDED of a per-try timeout       timeout
    INTERNAL, UNKNOWN, DATA_LOSS                 500
    RESOURCE_EXHAUSTED 429, UNIMPLEMENTED 501, other codes 4xx (never failures)
"""

from __future__ import annotations

import time
from typing import Any

from meshlib.errors import DeadlineExceeded, FaultInjected, RequestError, RetryBudgetExhausted
from meshlib.resilience import deadline as _deadline
from meshlib.resilience.retry import CONNECT_FAILURE, RESET, TIMEOUT, Outcome

try:
    import grpc  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("meshlib's gRPC needs grpcio: pip install 'inproc-mesh[grpc]'") from exc

__all__ = [
    "DEFAULT_GRACE",
    "GRPC_METHOD",
    "BudgetExhaustedRpcError",
    "MeshRpcError",
    "code_of",
    "current_deadline",
    "grpc_code",
    "note_outcome",
    "outcome_of",
    "rpc_error",
]

DEFAULT_GRACE = 30.0
"""Seconds a replaced sub-channel (old SVID, departed endpoint) keeps serving its calls."""

GRPC_METHOD = "POST"

# gRPC code -> the HTTP status the policy's conditions speak of (gRPC's own mapping table,
# read backwards), for codes that are not failures before a response.
_STATUS_OF = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_CODES = {code.value[0]: code for code in grpc.StatusCode}
OK = Outcome.from_status(200)
_CONNECT_HINTS = ("failed to connect", "connection refused", "connections to all backends failing")
_RESET_HINTS = ("socket closed", "connection reset", "stream removed", "goaway", "broken pipe")


# --------------------------------------------------------------------- deadlines


def current_deadline() -> float | None:
    """Absolute ``time.monotonic()`` deadline of the call being served, if any.

    The one deadline context of the mesh (:mod:`meshlib.resilience.deadline`), shared with
    the HTTP side: a gRPC handler calling over HTTP, or the reverse, passes it on.
    """
    return _deadline.current_deadline.get()


# --------------------------------------------------------------------- errors


class MeshRpcError(grpc.RpcError):  # type: ignore[misc]
    """A call the mesh itself answered, as a ``grpc.RpcError`` (``code()``, ``details()``).

    ``mesh_error`` is the :class:`~meshlib.errors.RequestError` behind it
    (:class:`meshlib.errors.NoHealthyEndpoint`, :class:`meshlib.errors.CircuitOpen`,
    :class:`meshlib.errors.DeadlineExceeded`, :class:`meshlib.errors.FaultInjected`), also
    chained as ``__cause__``.
    """

    def __init__(self, code: grpc.StatusCode, mesh_error: RequestError) -> None:
        super().__init__(f"{code.name}: {mesh_error}")
        self._code = code
        self.mesh_error = mesh_error
        self.__cause__ = mesh_error

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return str(self.mesh_error)

    def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-mesh-flag", self.mesh_error.flag),)


class BudgetExhaustedRpcError(MeshRpcError):
    """The last try's error, raised when the retry budget refused the next try.

    ``code()``, ``details()`` and the metadata are the last try's; the trailing metadata
    also carries ``x-mesh-flag: RETRY_BUDGET_EXHAUSTED`` (as an HTTP response gets the
    header), ``mesh_error`` is the :class:`~meshlib.errors.RetryBudgetExhausted` and
    ``last`` the try's own ``grpc.RpcError``.
    """

    def __init__(self, last: Any, mesh_error: RetryBudgetExhausted) -> None:
        super().__init__(code_of(last), mesh_error)
        self.last = last

    def details(self) -> str:
        return str(_read(self.last, "details", ""))

    def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple(_read(self.last, "initial_metadata", ()) or ())

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        last = tuple(_read(self.last, "trailing_metadata", ()) or ())
        return (*last, ("x-mesh-flag", self.mesh_error.flag))


def _read(error: Any, name: str, default: Any) -> Any:
    method = getattr(error, name, None)
    return method() if callable(method) else default


def code_of(error: Any) -> grpc.StatusCode:
    """The status code of a failed call (UNKNOWN when it has none)."""
    code = _read(error, "code", None)
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def outcome_of(error: Any, *, per_try_expired: bool = False) -> Outcome:
    """The policy's view of a failed try (table in the module docstring)."""
    code = code_of(error)
    if code == grpc.StatusCode.UNAVAILABLE:
        lowered = str(_read(error, "details", "")).lower()
        if any(hint in lowered for hint in _CONNECT_HINTS):
            return CONNECT_FAILURE
        if any(hint in lowered for hint in _RESET_HINTS):
            return RESET
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and per_try_expired:
        return TIMEOUT
    return Outcome.from_status(_STATUS_OF.get(code, 500))


def note_outcome(error: Any, per_try: float | None, started_at: float) -> Outcome:
    """:func:`outcome_of` a failed try, with per-try timeouts told apart by elapsed time."""
    expired = per_try is not None and time.monotonic() - started_at >= per_try * 0.95
    return outcome_of(error, per_try_expired=expired)


def grpc_code(value: int) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` of a numeric code (UNKNOWN for an unknown one)."""
    return _CODES.get(value, grpc.StatusCode.UNKNOWN)


def rpc_error(error: RequestError, fault_code: int | None = None) -> MeshRpcError:
    """A mesh decision (deadline, no endpoint, open breaker, pool full, fault) as gRPC."""
    if isinstance(error, FaultInjected) and fault_code is not None:
        return MeshRpcError(grpc_code(fault_code), error)
    if isinstance(error, DeadlineExceeded):
        return MeshRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, error)
    return MeshRpcError(grpc.StatusCode.UNAVAILABLE, error)
