from __future__ import annotations

from collections.abc import Callable

import pytest

from meshlib.policy.model import MAX_DURATION, AbortFault, DelayFault, FaultPolicy
from meshlib.resilience.fault import NO_FAULT, FaultDecision, decide_fault, grpc_status_for_http


def draws(*values: float) -> Callable[[], float]:
    it = iter(values)
    return lambda: next(it)


def test_no_fault_policy_means_no_fault() -> None:
    """Without a fault policy nothing is injected."""
    assert decide_fault(None) is NO_FAULT


def test_hundred_percent_always_and_zero_never_fires() -> None:
    """100 % fires even on the highest draw; 0 % never fires, even on 0.0."""
    always = FaultPolicy(delay=DelayFault(100, 0.5), abort=AbortFault(100, 503))
    never = FaultPolicy(delay=DelayFault(0, 0.5), abort=AbortFault(0, 503))
    assert decide_fault(always, draws(0.999999, 0.999999)) == FaultDecision(0.5, 503, 14)
    assert decide_fault(never, draws(0.0, 0.0)) is NO_FAULT


def test_percent_is_compared_with_the_draw() -> None:
    """A p % fault fires when the draw times 100 is below p."""
    fault = FaultPolicy(delay=DelayFault(25, 1.0))
    assert decide_fault(fault, draws(0.2499)).delay == 1.0
    assert decide_fault(fault, draws(0.25)) is NO_FAULT


def test_delay_and_abort_are_drawn_independently() -> None:
    """Delay and abort each use their own draw: either, both or neither may fire."""
    fault = FaultPolicy(delay=DelayFault(50, 2.0), abort=AbortFault(50, 500))
    assert decide_fault(fault, draws(0.1, 0.9)) == FaultDecision(2.0, None, None)
    assert decide_fault(fault, draws(0.9, 0.1)) == FaultDecision(0.0, 500, 2)
    assert decide_fault(fault, draws(0.1, 0.1)) == FaultDecision(2.0, 500, 2)
    assert decide_fault(fault, draws(0.9, 0.9)) is NO_FAULT


def test_grpc_status_from_policy_wins() -> None:
    """An abort's grpcStatus is used for gRPC callers when given."""
    fault = FaultPolicy(abort=AbortFault(100, 503, grpc_status=8))
    assert decide_fault(fault, draws(0.0)) == FaultDecision(0.0, 503, 8)


def test_grpc_status_defaults_to_the_http_mapping() -> None:
    """Without grpcStatus, gRPC callers get the code gRPC maps the HTTP status to."""
    assert grpc_status_for_http(503) == 14
    assert grpc_status_for_http(404) == 12
    assert grpc_status_for_http(403) == 7
    assert grpc_status_for_http(418) == 2


def test_only_configured_kinds_draw() -> None:
    """A policy with only an abort draws once (rand is not consumed for the delay)."""
    fault = FaultPolicy(abort=AbortFault(100, 429))
    assert decide_fault(fault, draws(0.5)) == FaultDecision(0.0, 429, 14)


@pytest.mark.parametrize("delay", [float("inf"), float("nan"), 1e300, -1.0])
def test_unrepresentable_delay_is_clamped(delay: float) -> None:
    """A hand-built delay that asyncio could not sleep becomes a finite one within 0..24 h."""
    decision = decide_fault(FaultPolicy(delay=DelayFault(100.0, delay)), rand=lambda: 0.0)
    assert 0.0 <= decision.delay <= MAX_DURATION
