"""Retry decisions, and the one adapter from our :class:`RetryPolicy` to tenacity.

The policy decides *whether* a try may be repeated (:func:`is_retry_safe`,
:func:`is_retryable`); tenacity runs the loop. :func:`build_retrying` is the only place
that translates a policy into tenacity objects, so there is one retry language (ours, in
the policy reference) and one engine (tenacity's).

What counts as retryable follows Envoy's ``retry_on``, so that a route means the same in
library mode and behind an Envoy sidecar (DESIGN.md invariant 5):

===================  =================================================================
condition            retries
===================  =================================================================
``connect-failure``  connection failures
``reset``            any reset before a response: connection failures, resets, per-try
                     timeouts
``5xx``              any 500-599 response, and everything ``reset`` retries
``gateway-error``    502, 503 and 504, and everything ``reset`` retries
``retriable-status-  the statuses in ``retriable_status_codes``
codes``
===================  =================================================================

Envoy counts a reset (including a failed connection) as a 5xx "since it will result in
one", and treats a per-try timeout the same way; we do too. A ``timeout`` outcome is a
*per-try* timeout: the call's own deadline is enforced by :func:`build_retrying`, which
never starts a retry that could not finish before it.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, overload

import tenacity
from tenacity.wait import wait_base

from meshlib.policy.model import GATEWAY_ERROR_STATUSES, Backoff, RetryPolicy
from meshlib.resilience.budget import RetryBudget

__all__ = [
    "CONNECT_FAILURE",
    "IDEMPOTENCY_KEY_HEADER",
    "IDEMPOTENT_METHODS",
    "RESET",
    "TIMEOUT",
    "Outcome",
    "OutcomeKind",
    "attempt_deadline",
    "backoff_delay",
    "backoff_wait",
    "build_retrying",
    "is_failure",
    "is_retry_safe",
    "is_retryable",
    "retry_fits",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
"""Methods RFC 9110 defines as idempotent: retried without asking (case-sensitive)."""

IDEMPOTENCY_KEY_HEADER = "idempotency-key"
"""A request carrying this header (non-empty) may be retried whatever its method."""

OutcomeKind: TypeAlias = Literal["status", "connect-failure", "reset", "timeout"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one try ended: a response status, or a failure before any response.

    ``connect-failure``: no connection could be made (refused, TLS handshake, connect
    timeout). ``reset``: the connection or stream broke before a response. ``timeout``:
    the per-try timeout fired.
    """

    kind: OutcomeKind
    status: int | None = None

    @classmethod
    def from_status(cls, code: int) -> Outcome:
        """The outcome of a try that got a response with status *code*."""
        return cls("status", code)


CONNECT_FAILURE = Outcome("connect-failure")
RESET = Outcome("reset")
TIMEOUT = Outcome("timeout")

# Conditions under which resets (and per-try timeouts) are retried, as in Envoy.
_RESET_CONDITIONS = frozenset({"reset", "5xx", "gateway-error"})
_CONNECT_CONDITIONS = _RESET_CONDITIONS | {"connect-failure"}


def is_retry_safe(method: str, headers: Mapping[str, str], policy: RetryPolicy) -> bool:
    """Whether a request may be sent more than once (DESIGN.md invariant 6).

    Idempotent methods always may; POST, PATCH and other methods only when the route sets
    ``allowNonIdempotent`` or the request carries a non-empty ``Idempotency-Key`` header.

    Args:
        method: the request method, upper-case as on the wire (methods are case-sensitive:
            ``"get"`` is not ``GET``).
        headers: request headers; either case-insensitive (``httpx.Headers``) or with
            lower-case keys. ``Idempotency-Key`` spelled exactly so is also found.
        policy: the route's retry policy.
    """
    if method in IDEMPOTENT_METHODS or policy.allow_non_idempotent:
        return True
    key = headers.get(IDEMPOTENCY_KEY_HEADER) or headers.get("Idempotency-Key")
    return bool(key)


def is_retryable(policy: RetryPolicy, outcome: Outcome) -> bool:
    """Whether *outcome* meets one of the policy's ``retryOn`` conditions (table above)."""
    retry_on = policy.retry_on
    kind = outcome.kind
    if kind == "status":
        status = outcome.status
        if status is None:
            return False
        if "5xx" in retry_on and 500 <= status <= 599:
            return True
        if "gateway-error" in retry_on and status in GATEWAY_ERROR_STATUSES:
            return True
        return "retriable-status-codes" in retry_on and status in policy.retriable_status_codes
    conditions = _CONNECT_CONDITIONS if kind == "connect-failure" else _RESET_CONDITIONS
    return not conditions.isdisjoint(retry_on)


def is_failure(outcome: Outcome) -> bool:
    """Whether *outcome* counts against an endpoint's health (breakers, outlier detection).

    Failures before a response (connect failure, reset, per-try timeout) and 5xx statuses.
    """
    if outcome.kind != "status":
        return True
    return outcome.status is not None and 500 <= outcome.status <= 599


def attempt_deadline(policy: RetryPolicy, deadline: float | None, now: float) -> float | None:
    """Absolute deadline of one try: ``now + perTryTimeout``, never past the call's *deadline*."""
    if policy.per_try_timeout is None:
        return deadline
    end = now + policy.per_try_timeout
    return end if deadline is None else min(end, deadline)


def backoff_delay(policy: Backoff, retry: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number *retry* (0 for the first): full jitter.

    Uniform in ``[0, min(max_interval, base_interval * 2**retry)]``: Envoy's algorithm,
    and the "full jitter" of the AWS architecture blog. The one backoff formula of the
    mesh: the call driver and the tenacity adapter both use it.
    """
    high = min(max(policy.max_interval, policy.base_interval), policy.base_interval * 2.0**retry)
    return rand() * high


class _Backoff(wait_base):
    def __init__(self, policy: Backoff) -> None:
        self._policy = policy

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return backoff_delay(self._policy, retry_state.attempt_number - 1)


def backoff_wait(policy: Backoff) -> wait_base:
    """:func:`backoff_delay` as a tenacity wait strategy."""
    return _Backoff(policy)


def retry_fits(
    policy: RetryPolicy, tries: int, delay: float, deadline: float | None, now: float
) -> bool:
    """Whether another try may start after *tries* tries and a *delay* backoff.

    Within ``1 + attempts`` tries, and the backoff ends before the call's *deadline*. The
    budget is consulted after this (a token is spent only on a retry that happens).
    """
    if tries >= 1 + max(policy.attempts, 0):
        return False
    return deadline is None or now + delay < deadline


OnRetry: TypeAlias = Callable[[int, Outcome, float], None]
"""``on_retry(attempt, outcome, delay)``: try number *attempt* ended with *outcome*; the
next try starts after *delay* seconds."""
OnBudgetExhausted: TypeAlias = Callable[[Outcome], None]
"""``on_budget_exhausted(outcome)``: a retry was due after *outcome* but the budget said no."""


@overload
def build_retrying(
    policy: RetryPolicy,
    *,
    budget: RetryBudget,
    should_retry: Callable[[Any], Outcome | None],
    deadline: float | None,
    clock: Callable[[], float] = ...,
    sleep: Callable[[float], Awaitable[None]] | None = ...,
    on_retry: OnRetry | None = ...,
    on_budget_exhausted: OnBudgetExhausted | None = ...,
    async_: Literal[True],
) -> tenacity.AsyncRetrying: ...


@overload
def build_retrying(
    policy: RetryPolicy,
    *,
    budget: RetryBudget,
    should_retry: Callable[[Any], Outcome | None],
    deadline: float | None,
    clock: Callable[[], float] = ...,
    sleep: Callable[[float], None] | None = ...,
    on_retry: OnRetry | None = ...,
    on_budget_exhausted: OnBudgetExhausted | None = ...,
    async_: Literal[False] = ...,
) -> tenacity.Retrying: ...


def build_retrying(
    policy: RetryPolicy,
    *,
    budget: RetryBudget,
    should_retry: Callable[[Any], Outcome | None],
    deadline: float | None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Any] | None = None,
    on_retry: OnRetry | None = None,
    on_budget_exhausted: OnBudgetExhausted | None = None,
    async_: bool = False,
) -> tenacity.Retrying | tenacity.AsyncRetrying:
    """Translate *policy* into a tenacity retrier for **one** call.

    Build a new one per call: it holds the call's deadline, and tenacity keeps per-call
    state on the retrier. Use it as ``retrying(send_once, ...)`` (or ``await
    retrying(...)`` when *async_*).

    The retrier makes at most ``1 + policy.attempts`` tries. After a try it asks
    ``should_retry(x)`` about the result or exception *x*; it tries again only when the
    answer is an :class:`Outcome` that :func:`is_retryable` accepts, the backoff sleep
    would end before *deadline*, and *budget* grants a token (checked last, so a token is
    spent only on a retry that happens). Otherwise it returns the last result or re-raises
    the last exception, exactly as the last try produced it. Exceptions outside
    ``Exception`` (cancellation, ``KeyboardInterrupt``) are never retried.

    The caller deposits into the budget itself (``budget.record_request()``, once per
    original request, retried or not); this function only withdraws. Per-try timeouts are
    applied by the caller around each try (see :func:`attempt_deadline`) and reported as
    :data:`TIMEOUT`.

    Args:
        policy: the route's retry policy.
        budget: the destination service's retry budget.
        should_retry: classifies a try's result or exception; None means "done".
        deadline: absolute deadline of the whole call on *clock*, or None.
        clock: monotonic seconds; injectable for tests.
        sleep: replaces ``time.sleep`` / ``asyncio.sleep`` (tests record delays with it).
        on_retry: telemetry hook called before each backoff sleep; its exceptions are
            swallowed (telemetry never fails a request).
        on_budget_exhausted: called when a retry was due but the budget refused it; it may
            raise (e.g. :class:`~meshlib.errors.RetryBudgetExhausted`) to fail the call
            instead of returning the last result.
        async_: build a ``tenacity.AsyncRetrying`` instead of a ``tenacity.Retrying``.
    """
    last: list[Outcome | None] = [None]  # the outcome of the latest try, for the hooks

    def retry(state: tenacity.RetryCallState) -> bool:
        future = state.outcome
        if future is None:  # pragma: no cover - tenacity always sets it before asking
            return False
        exc = future.exception() if future.failed else None
        if exc is not None and not isinstance(exc, Exception):
            return False
        outcome = should_retry(exc if exc is not None else future.result())
        last[0] = outcome
        return outcome is not None and is_retryable(policy, outcome)

    def stop(state: tenacity.RetryCallState) -> bool:
        if not retry_fits(policy, state.attempt_number, state.upcoming_sleep, deadline, clock()):
            return True
        if budget.try_spend():
            return False
        outcome = last[0]
        if on_budget_exhausted is not None and outcome is not None:
            on_budget_exhausted(outcome)
        return True

    def before_sleep(state: tenacity.RetryCallState) -> None:
        outcome = last[0]
        if on_retry is None or outcome is None:
            return
        with contextlib.suppress(Exception):  # telemetry never fails a request
            on_retry(state.attempt_number, outcome, state.upcoming_sleep)

    def give_up(state: tenacity.RetryCallState) -> Any:
        # The last try's own result, or its own exception re-raised (not a RetryError).
        assert state.outcome is not None
        return state.outcome.result()

    options: dict[str, Any] = {
        "stop": stop,
        "wait": backoff_wait(policy.backoff),
        "retry": retry,
        "before_sleep": before_sleep,
        "reraise": True,
        "retry_error_callback": give_up,
    }
    if sleep is not None:
        options["sleep"] = sleep
    if async_:
        return tenacity.AsyncRetrying(**options)
    return tenacity.Retrying(**options)
