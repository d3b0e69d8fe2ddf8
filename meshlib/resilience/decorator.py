"""``@mesh.resilient("payments")``: a named policy's timeout, retries and breaker on any call.

The name is a TrafficPolicy's ``spec.service`` (it needs no endpoints: a policy for a
third-party API works). Its first route without a ``match`` (else the defaults) gives the
timeout and retry policy, its
``retryBudget`` the budget and its ``circuitBreaker`` one breaker for the decorated call.
An exception of a ``retry_on`` type counts as a failure and is retried like a reset: with
backoff, within the attempts, the deadline and the budget; a
:class:`~meshlib.errors.PeerIdentityError` (a server refused before anything was sent) counts
as a connect failure instead, which ``retryOn: [connect-failure]`` alone also retries.
Anything else propagates at once and does not trip the breaker.

Async functions are cancelled at their deadline (:class:`DeadlineExceeded`); a sync
function cannot be interrupted, so its deadline is checked between attempts and handed
to meshed calls it makes (the ambient deadline).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, ParamSpec, Protocol, TypeVar, cast

from meshlib.errors import CircuitOpen, DeadlineExceeded, PeerIdentityError, UnknownServiceError
from meshlib.policy.engine import CompiledService
from meshlib.policy.model import DEFAULT_TIMEOUT
from meshlib.resilience.breaker import BreakerRegistry
from meshlib.resilience.budget import RetryBudget
from meshlib.resilience.deadline import deadline_scope, effective_deadline
from meshlib.resilience.retry import CONNECT_FAILURE, RESET, Outcome, build_retrying

__all__ = ["resilient"]

P = ParamSpec("P")
R = TypeVar("R")


class _Runtime(Protocol):
    """What the decorator uses of a destination's shared runtime."""

    @property
    def budget(self) -> RetryBudget: ...

    @property
    def breakers(self) -> BreakerRegistry: ...


class _Destination(Protocol):
    @property
    def service(self) -> CompiledService: ...

    @property
    def runtime(self) -> _Runtime: ...


class View(Protocol):
    """The active view, as the decorator reads it (:class:`meshlib.runtime.view.ActiveView`)."""

    def resolve(self, host: str) -> _Destination | None: ...


class _Policy:
    """What one decorated call needs, resolved from the active view."""

    __slots__ = ("deadline", "key", "plan", "runtime", "service")

    def __init__(self, view: View, name: str, clock: Callable[[], float]) -> None:
        destination = view.resolve(name)
        if destination is None:
            raise UnknownServiceError(name)
        service = destination.service
        self.service = service
        self.runtime: _Runtime = destination.runtime
        self.plan = service.call_plan
        timeout = self.plan.timeout if self.plan.timeout is not None else DEFAULT_TIMEOUT
        self.deadline = effective_deadline(timeout, clock())
        self.key = f"call:{service.key}"

    def admit(self) -> None:
        if not self.runtime.breakers.allow(self.key):
            raise CircuitOpen(
                f"{self.service.key}: circuit breaker open for the decorated call",
                service=self.service.key,
            )

    def expired(self, clock: Callable[[], float]) -> DeadlineExceeded | None:
        if self.deadline is not None and clock() >= self.deadline:
            return DeadlineExceeded(
                f"{self.service.key}: deadline exceeded",
                service=self.service.key,
                deadline=self.deadline,
            )
        return None


def resilient(
    view: Callable[[], View],
    name: str,
    *,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Build the decorator; :meth:`meshlib.Mesh.resilient` is the public entry point."""

    def classify(result: object) -> Outcome | None:
        if isinstance(result, BaseException) and isinstance(result, retry_on):
            if isinstance(result, CircuitOpen | DeadlineExceeded):
                return None
            return CONNECT_FAILURE if isinstance(result, PeerIdentityError) else RESET
        return None

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(fn):
            afn = cast(Callable[P, Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                policy = _Policy(view(), name, clock)

                async def attempt() -> Any:
                    policy.admit()
                    expired = policy.expired(clock)
                    if expired is not None:
                        raise expired
                    left = None if policy.deadline is None else policy.deadline - clock()
                    try:
                        with deadline_scope(policy.deadline):
                            async with asyncio.timeout(left):
                                result = await afn(*args, **kwargs)
                    except TimeoutError as exc:
                        policy.runtime.breakers.record(policy.key, False)
                        raise policy.expired(clock) or DeadlineExceeded(
                            f"{name}: deadline exceeded", service=name, deadline=policy.deadline
                        ) from exc
                    except BaseException as exc:
                        policy.runtime.breakers.record(policy.key, not isinstance(exc, retry_on))
                        raise
                    policy.runtime.breakers.record(policy.key, True)
                    return result

                policy.runtime.budget.record_request()
                retrying = build_retrying(
                    replace(policy.plan.retries, retry_on=("reset",)),
                    budget=policy.runtime.budget,
                    should_retry=classify,
                    deadline=policy.deadline,
                    clock=clock,
                    async_=True,
                )
                return await retrying(attempt)

            return cast(Callable[P, R], async_wrapper)

        @functools.wraps(fn)
        def sync_wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            policy = _Policy(view(), name, clock)

            def attempt() -> R:
                policy.admit()
                expired = policy.expired(clock)
                if expired is not None:
                    raise expired
                try:
                    with deadline_scope(policy.deadline):
                        result = fn(*args, **kwargs)
                except BaseException as exc:
                    policy.runtime.breakers.record(policy.key, not isinstance(exc, retry_on))
                    raise
                policy.runtime.breakers.record(policy.key, True)
                return result

            policy.runtime.budget.record_request()
            retrying = build_retrying(
                replace(policy.plan.retries, retry_on=("reset",)),
                budget=policy.runtime.budget,
                should_retry=classify,
                deadline=policy.deadline,
                clock=clock,
                async_=False,
            )
            result: R = retrying(attempt)
            return result

        return sync_wrapper

    return decorate
