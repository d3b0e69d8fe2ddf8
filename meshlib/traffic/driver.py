"""The one call driver: plan, pick, attempt, observe, retry or finish — without I/O.

Every client flavour (httpx sync and async, gRPC sync and aio) runs the same short loop
around a :class:`CallDriver`; the driver decides, the loop does the I/O::

    action = driver.begin()                 # may raise a mesh error (pool, deadline...)
    try:
        while True:
            if action is SLEEP:             # fault delay or retry backoff
                sleep(driver.delay); action = driver.resume()
            elif action is ABORT:           # fault abort: answer from driver.fault
                ...
            elif action is ATTEMPT:         # send to driver.endpoint within driver.timeout
                result = send(...)
                action = driver.observe(outcome_of(result))
                if action is DONE: return result
    finally:
        driver.close()

So a decision — which endpoint, how long a try may take, whether a failure may be
retried, how long to back off, whether the budget allows it — is written once, here and in
the pure functions it calls (:mod:`meshlib.resilience.retry`, :class:`ServiceRuntime`).
The flavours only map their results to an :class:`Outcome` and their sleeps to their
event loop. (Why sans-I/O rather than generated sync code: docs/concepts.md.)
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Final

from meshlib.errors import DeadlineExceeded
from meshlib.policy.engine import RoutePlan
from meshlib.policy.model import DEFAULT_TIMEOUT
from meshlib.policy.snapshot import Endpoint
from meshlib.resilience.fault import NO_FAULT, FaultDecision
from meshlib.resilience.retry import Outcome, backoff_delay, is_retryable, retry_fits
from meshlib.traffic.balancers import EndpointStats
from meshlib.traffic.runtime import ServiceRuntime

__all__ = ["ABORT", "ATTEMPT", "DONE", "SLEEP", "CallDriver"]

ATTEMPT: Final = 1
"""Send one try to ``driver.endpoint``, within ``driver.timeout`` seconds (None: no limit)."""
SLEEP: Final = 2
"""Sleep ``driver.delay`` seconds, then call :meth:`CallDriver.resume`."""
ABORT: Final = 3
"""Answer with the route's fault abort (``driver.fault``) and send nothing."""
DONE: Final = 4
"""The last try's result is the call's result."""

_NONE: frozenset[str] = frozenset()
_INF = float("inf")


class CallDriver:
    """The decisions of one outbound call to one destination.

    Args:
        runtime: the destination's shared state (from the active view).
        plan: the matched route's plan, captured for the whole call.
        retry_safe: the request may be sent twice (idempotent, or allowed by route/call,
            and its body can be replayed). Connect failures are retried regardless:
            nothing was sent.
        deadline: absolute deadline of the whole call on *clock*, or None.
        fault: this call's fault decision (decided once, at start).
        retries: False for calls that can never be re-sent (streams, futures).
        clock: monotonic seconds.
    """

    __slots__ = (
        "_admitted",
        "_faulted",
        "_started",
        "_stats",
        "attempts",
        "budget_exhausted",
        "clock",
        "deadline",
        "delay",
        "endpoint",
        "fault",
        "plan",
        "retries",
        "retry_safe",
        "runtime",
        "timeout",
        "tried",
    )

    def __init__(
        self,
        runtime: ServiceRuntime,
        plan: RoutePlan,
        *,
        retry_safe: bool,
        deadline: float | None,
        fault: FaultDecision = NO_FAULT,
        retries: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runtime = runtime
        self.plan = plan
        self.retry_safe = retry_safe
        self.deadline = deadline
        self.fault = fault
        self.retries = retries and plan.retries.attempts > 0
        self.clock = clock
        self.attempts = 0
        self.tried = _NONE
        self.budget_exhausted = False
        self.delay = 0.0
        self.timeout: float | None = None
        self.endpoint: Endpoint | None = None
        self._stats: EndpointStats | None = None
        self._started = 0.0
        self._admitted = False
        self._faulted = fault.delay > 0

    # ------------------------------------------------------------------ the loop

    def begin(self) -> int:
        """The first action: the fault delay, the fault abort or the first try.

        Raises:
            PoolOverflow: the destination's pool limits are reached.
            CircuitOpen, NoHealthyEndpoint: no endpoint can take the try.
            DeadlineExceeded: the deadline passed before the first try.
        """
        if self._faulted:
            self.delay = min(self.fault.delay, max(self.remaining(), 0.0))
            return SLEEP
        return self._start()

    def resume(self) -> int:
        """The action after a :data:`SLEEP`."""
        if self._faulted:
            self._faulted = False
            return self._start()
        return self._next_attempt()

    def observe(self, outcome: Outcome | None) -> int:
        """How the try ended; returns :data:`DONE` or the action of the next try.

        *outcome* is None for an exception the mesh does not classify: it is neither
        retried nor counted against the endpoint.
        """
        stats = self._stats
        if stats is not None:
            self._stats = None
            stats.finish(self._started, outcome is not None and outcome.kind == "status")
        endpoint = self.endpoint
        if outcome is None or endpoint is None:
            return DONE
        runtime = self.runtime
        runtime.record(endpoint, outcome)
        if not self.retries or not self.may_retry(outcome):
            return DONE
        retries = self.plan.retries
        delay = backoff_delay(retries.backoff, self.attempts - 1)
        if not retry_fits(retries, self.attempts, delay, self.deadline, self.clock()):
            return DONE
        if not runtime.budget.try_spend():
            self.budget_exhausted = True
            return DONE
        self.tried = self.tried | {endpoint.authority}  # the next try avoids it
        if delay <= 0:
            return self._next_attempt()
        self.delay = delay
        return SLEEP

    def close(self) -> None:
        """Release the call's admission; call once, when the call ends (``finally``)."""
        if self._admitted:
            self._admitted = False
            self.runtime.release()

    # ------------------------------------------------------------------ decisions

    def may_retry(self, outcome: Outcome) -> bool:
        """Whether *outcome* may be retried: the route's ``retryOn``, and safety.

        A connect failure may be retried for any method and body: nothing was sent.
        """
        if not self.retry_safe and outcome.kind != "connect-failure":
            return False
        return is_retryable(self.plan.retries, outcome)

    def remaining(self) -> float:
        """Seconds left before the call's deadline (infinite without one)."""
        return _INF if self.deadline is None else self.deadline - self.clock()

    def mirror_endpoint(self, rand: float) -> Endpoint | None:
        """Where to send this call's shadow copy, or None this time."""
        mirror = self.plan.mirror
        if mirror is None or rand * 100.0 >= mirror.percent:
            return None
        return self.runtime.balancer.pick(mirror.endpoints)

    def deadline_error(self, what: str) -> DeadlineExceeded:
        """The error of a call that ran out of time (*what* says how)."""
        timeout = self.plan.timeout if self.plan.timeout is not None else DEFAULT_TIMEOUT
        endpoint = self.endpoint.authority if self.endpoint is not None else None
        return DeadlineExceeded(
            f"{self.runtime.name}: {what} (route {self.plan.name}, timeout {timeout:g}s, "
            f"{self.attempts} attempt(s))",
            service=self.runtime.name,
            endpoint=endpoint,
            deadline=self.deadline,
        )

    # ------------------------------------------------------------------ internals

    def _start(self) -> int:
        if self.fault.abort_http is not None or self.fault.abort_grpc is not None:
            return ABORT
        runtime = self.runtime
        runtime.admit()
        self._admitted = True
        runtime.budget.record_request()
        return self._next_attempt()

    def _next_attempt(self) -> int:
        remaining = self.remaining()
        if remaining <= 0:
            raise self.deadline_error("deadline exceeded before the attempt")
        runtime = self.runtime
        endpoint = runtime.choose(self.plan, random.random(), self.tried)
        authority = endpoint.authority
        self.endpoint = endpoint
        self.attempts += 1
        per_try = self.plan.retries.per_try_timeout
        budget = min(remaining, per_try) if per_try is not None else remaining
        self.timeout = None if budget == _INF else budget
        stats = self._stats = runtime.stats.get(authority)
        self._started = stats.start()
        return ATTEMPT
