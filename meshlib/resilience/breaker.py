"""Per-endpoint circuit breakers, with pybreaker as the state machine.

An endpoint's breaker opens after ``consecutiveFailures`` failures in a row, refuses calls
for ``resetTimeout``, then lets exactly one probe through (half-open): the probe's success
closes it, its failure opens it again for another ``resetTimeout``.

How pybreaker is used, and why not ``CircuitBreaker.call``: pybreaker guards a call by
wrapping it (``call(func)``), under an ``RLock``, and measures the reset timeout on the
wall clock (``datetime.now``), which cannot be injected. The mesh needs the opposite shape:
ask ``allow(endpoint)`` before picking an endpoint, send without holding anything, and
``record`` the outcome later (possibly on another task), deterministically in tests. So:

* each endpoint gets a ``pybreaker.CircuitBreaker`` (``fail_max``, ``reset_timeout``,
  ``success_threshold=1``) over a ``CircuitMemoryStorage`` we keep a reference to. The
  storage holds the state and the counters; counting goes through the storage's public
  methods, transitions through the breaker's ``open()`` / ``half_open()`` / ``close()``, and
  pybreaker's listeners report them. Nothing here calls ``call()``, so pybreaker's wall
  clock is never consulted;
* the moment the breaker opened is kept on our injectable monotonic clock, and ``allow``
  performs the open → half-open transition itself once ``resetTimeout`` has passed.

Hot paths take no lock: ``allow`` on a closed (or never-failed) endpoint is a dict lookup
and an attribute read; ``record`` is a counter update. Counters can lose an update when
two threads interleave, which shifts the trip point by one failure. Only the rare open →
half-open claim takes a lock, so that exactly one caller becomes the probe.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from typing import Literal, TypeAlias, cast

import pybreaker

from meshlib.policy.model import CircuitBreakerPolicy

__all__ = ["BreakerRegistry", "BreakerState", "OnTransition"]

BreakerState: TypeAlias = Literal["closed", "open", "half-open"]
OnTransition: TypeAlias = Callable[[str, str, str], None]
"""``on_transition(authority, old_state, new_state)``; for metrics and logs."""

_CLOSED = pybreaker.STATE_CLOSED
_OPEN = pybreaker.STATE_OPEN
_HALF_OPEN = pybreaker.STATE_HALF_OPEN


class _Listener(pybreaker.CircuitBreakerListener):
    """Forwards pybreaker's state changes to ``on_transition``; never raises."""

    def __init__(self, hook: OnTransition) -> None:
        self._hook = hook

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        old = old_state.name if old_state is not None else _CLOSED
        if old != new_state.name:
            with contextlib.suppress(Exception):  # telemetry never fails a request
                self._hook(cb.name or "", old, new_state.name)


class _Endpoint:
    """One endpoint's breaker, its storage, and our monotonic timestamps."""

    __slots__ = ("breaker", "opened_at", "probe_at", "storage")

    def __init__(self, breaker: pybreaker.CircuitBreaker, storage: pybreaker.CircuitMemoryStorage):
        self.breaker = breaker
        self.storage = storage
        self.opened_at = 0.0  # when it last opened
        self.probe_at = 0.0  # when the current half-open probe was let through


class BreakerRegistry:
    """The circuit breakers of one destination service, one per endpoint authority."""

    __slots__ = ("_claim", "_clock", "_endpoints", "_listeners", "policy")

    def __init__(
        self,
        policy: CircuitBreakerPolicy | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_transition: OnTransition | None = None,
    ) -> None:
        """Create the registry; with *policy* None every endpoint is always allowed.

        Args:
            policy: the service's ``circuitBreaker``, or None when it has none.
            clock: monotonic seconds; injectable for tests.
            on_transition: called with ``(authority, old, new)`` on every state change.
        """
        self.policy = policy
        self._clock = clock
        self._endpoints: dict[str, _Endpoint] = {}
        self._listeners = (_Listener(on_transition),) if on_transition is not None else ()
        self._claim = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether the service has a breaker policy (without one, everything is allowed)."""
        return self.policy is not None

    def _endpoint(self, authority: str) -> _Endpoint:
        found = self._endpoints.get(authority)
        if found is not None:
            return found
        policy = cast(CircuitBreakerPolicy, self.policy)
        storage = pybreaker.CircuitMemoryStorage(_CLOSED)
        breaker = pybreaker.CircuitBreaker(
            fail_max=policy.consecutive_failures,
            reset_timeout=policy.reset_timeout,
            success_threshold=1,
            state_storage=storage,
            listeners=self._listeners,
            name=authority,
        )
        # setdefault: if two threads race here, both use the same breaker.
        return self._endpoints.setdefault(authority, _Endpoint(breaker, storage))

    def allow(self, authority: str) -> bool:
        """Whether a call may go to *authority* now.

        True when closed; False when open. Once ``resetTimeout`` has passed since it opened,
        exactly one caller gets True (the half-open probe) and the others False until the
        probe is recorded. A probe that is never recorded (its caller was cancelled) is
        replaced by a new one after another ``resetTimeout``.
        """
        if self.policy is None:
            return True
        ep = self._endpoints.get(authority)
        if ep is None:
            return True
        state = ep.storage.state
        if state == _CLOSED:
            return True
        timeout = self.policy.reset_timeout
        now = self._clock()
        since = ep.opened_at if state == _OPEN else ep.probe_at
        if now - since < timeout:
            return False
        with self._claim:  # rare: at most once per resetTimeout per endpoint
            state = ep.storage.state
            if state == _OPEN and now - ep.opened_at >= timeout:
                ep.probe_at = now
                ep.breaker.half_open()
                return True
            if state == _HALF_OPEN and now - ep.probe_at >= timeout:
                ep.probe_at = now
                return True
            return state == _CLOSED

    def record(self, authority: str, success: bool) -> None:
        """Report how a call to *authority* ended (see ``retry.is_failure``).

        In the closed state a success resets the failure count and a failure adds to it,
        opening the breaker at ``consecutiveFailures``. In the half-open state the report
        decides: success closes, failure reopens. Reports that arrive while open (calls
        sent before it opened) are ignored.
        """
        if self.policy is None:
            return
        if success:
            ep = self._endpoints.get(authority)
            if ep is None:
                return
            storage = ep.storage
            state = storage.state
            if state == _CLOSED:
                if storage.counter:
                    storage.reset_counter()
            elif state == _HALF_OPEN:
                storage.increment_success_counter()
                if storage.success_counter >= ep.breaker.success_threshold:
                    ep.breaker.close()
            return
        ep = self._endpoint(authority)
        storage = ep.storage
        state = storage.state
        if state == _CLOSED:
            storage.increment_counter()
            if storage.counter >= ep.breaker.fail_max:
                self._open(ep)
        elif state == _HALF_OPEN:
            self._open(ep)

    def _open(self, ep: _Endpoint) -> None:
        ep.opened_at = self._clock()
        ep.breaker.open()  # also stamps pybreaker's own (wall-clock, unused) opened_at

    def state(self, authority: str) -> BreakerState:
        """The state of *authority*'s breaker.

        The open → half-open transition happens in :meth:`allow`, so an open breaker whose
        timeout has passed reads ``"open"`` until a caller asks.
        """
        ep = self._endpoints.get(authority) if self.policy is not None else None
        if ep is None:
            return "closed"
        return cast(BreakerState, ep.storage.state)

    def retain(self, authorities: Iterable[str]) -> None:
        """Forget the breakers of endpoints not in *authorities* (endpoints that left)."""
        keep = set(authorities)
        for authority in [a for a in self._endpoints if a not in keep]:
            self._endpoints.pop(authority, None)

    def __repr__(self) -> str:
        opened = sum(1 for ep in self._endpoints.values() if ep.storage.state != _CLOSED)
        return f"<BreakerRegistry endpoints={len(self._endpoints)} not_closed={opened}>"
