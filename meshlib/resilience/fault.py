"""Client-side fault injection: decide whether one request is delayed and/or aborted.

Whether a route's fault applies to a request at all (its header filter) is
:meth:`meshlib.policy.engine.RoutePlan.fault_applies`; this module only rolls the dice. The
delay and the abort are drawn independently, as in Envoy's fault filter: a request can be
delayed, then aborted.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from meshlib.policy.model import MAX_DURATION, FaultPolicy

__all__ = ["NO_FAULT", "FaultDecision", "decide_fault", "grpc_status_for_http"]


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What to do to one request.

    Attributes:
        delay: seconds to wait before sending (0.0 for none).
        abort_http: status to answer HTTP callers with instead of sending, or None.
        abort_grpc: status code to answer gRPC callers with, or None. Set whenever
            ``abort_http`` is: the policy's ``grpcStatus``, else the gRPC code that the
            HTTP status maps to.
    """

    delay: float
    abort_http: int | None
    abort_grpc: int | None


NO_FAULT = FaultDecision(0.0, None, None)

# The mapping gRPC clients apply to a non-200 HTTP status (grpc/doc/http-grpc-status-mapping.md).
_GRPC_FOR_HTTP = {
    400: 13,  # INTERNAL
    401: 16,  # UNAUTHENTICATED
    403: 7,  # PERMISSION_DENIED
    404: 12,  # UNIMPLEMENTED
    429: 14,  # UNAVAILABLE
    502: 14,
    503: 14,
    504: 14,
}
_GRPC_UNKNOWN = 2


def grpc_status_for_http(status: int) -> int:
    """The gRPC status code a gRPC client reports for HTTP *status*."""
    return _GRPC_FOR_HTTP.get(status, _GRPC_UNKNOWN)


def decide_fault(
    fault: FaultPolicy | None, rand: Callable[[], float] = random.random
) -> FaultDecision:
    """Roll the dice for one request the fault applies to.

    Args:
        fault: the route's fault policy, or None.
        rand: uniform in ``[0, 1)``; a percentage *p* fires when ``rand() * 100 < p``, so
            100 always fires and 0 never does. Called once per fault kind configured.

    Returns:
        :data:`NO_FAULT` when nothing fires, else the decision.
    """
    if fault is None:
        return NO_FAULT
    delay = 0.0
    if fault.delay is not None and rand() * 100.0 < fault.delay.percent:
        # The decoder bounds fixedDelay to MAX_DURATION; clamping here too keeps a
        # hand-built policy from handing asyncio.sleep an overflowing (or NaN) delay.
        fixed = fault.delay.fixed_delay
        delay = fixed if 0.0 <= fixed <= MAX_DURATION else (MAX_DURATION if fixed > 0 else 0.0)
    abort = fault.abort
    if abort is not None and rand() * 100.0 < abort.percent:
        grpc = abort.grpc_status
        if grpc is None:
            grpc = grpc_status_for_http(abort.http_status)
        return FaultDecision(delay, abort.http_status, grpc)
    return FaultDecision(delay, None, None) if delay else NO_FAULT
