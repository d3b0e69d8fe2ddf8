"""Outlier detection: passive health checking that ejects endpoints which keep failing.

Semantics (Envoy's consecutive-error detectors, with local-origin errors not split out):

* **consecutive 5xx**: any :func:`~meshlib.resilience.retry.is_failure` outcome, that is a
  5xx status *or* a local failure (connect failure, reset, per-try timeout), extends the
  streak. Envoy does the same when ``split_external_local_origin_errors`` is off (its
  default): a local failure is counted as the 5xx it would have produced.
* **consecutive gateway errors**: 502, 503, 504 and local failures extend the streak; any
  other 5xx ends it, as in Envoy.
* A non-failure outcome ends both streaks. A streak whose first error is older than
  ``interval`` restarts at the current error (Envoy has no such rule; without it, five
  errors spread over a day would eject an endpoint that answers millions of requests).
* An endpoint whose streak reaches its threshold is ejected for
  ``baseEjectionTime * n``, where *n* counts its ejections, capped by
  :data:`DEFAULT_MAX_EJECTION_TIME` (or ``baseEjectionTime`` if larger), as Envoy's
  ``max_ejection_time`` default.
* Each full ``interval`` an endpoint spends un-ejected takes one off *n* (Envoy's decay).
* Never eject when that would make ``ejected / total`` exceed ``maxEjectionPercent``
  (current Envoy: ``(ejected + 1) / total <= max``): with 50 % and two endpoints one may be
  ejected; with 10 % and five, none. An endpoint blocked by the cap keeps its streak, so its
  next error tries again (Envoy resets it instead).
  *total* is the set given to :meth:`OutlierDetector.set_endpoints`, or, before that is
  called, every endpoint seen so far.
* Reports about an endpoint while it is ejected (calls sent before) are ignored.

No locks: per-endpoint counters are plain attributes, so two threads interleaving may lose
one count; :meth:`OutlierDetector.ejected` is a cached frozenset swapped in one assignment.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable

from meshlib.policy.model import GATEWAY_ERROR_STATUSES, OutlierDetection
from meshlib.resilience.retry import Outcome, is_failure

__all__ = ["DEFAULT_MAX_EJECTION_TIME", "OnEject", "OutlierDetector"]

DEFAULT_MAX_EJECTION_TIME = 300.0
"""Longest ejection, in seconds, unless ``baseEjectionTime`` is longer (Envoy's default)."""

OnEject = Callable[[str, float], None]
"""``on_eject(authority, seconds)``: *authority* was just ejected for *seconds*."""

_NONE: frozenset[str] = frozenset()


class _Host:
    __slots__ = (
        "decay_from",
        "ejected_until",
        "ejections",
        "gw_errors",
        "gw_since",
        "server_errors",
        "server_since",
    )

    def __init__(self) -> None:
        self.server_errors = 0  # consecutive 5xx (and local failures)
        self.server_since = 0.0
        self.gw_errors = 0  # consecutive gateway errors (and local failures)
        self.gw_since = 0.0
        self.ejections = 0
        self.ejected_until = 0.0  # > now while ejected
        self.decay_from = 0.0  # ejections decay by one per interval from here


def _decayed(host: _Host, now: float, interval: float) -> int:
    """*host*'s ejection count after one is forgiven per full interval spent un-ejected."""
    if not host.ejections or now < host.decay_from:
        return host.ejections
    return max(host.ejections - int((now - host.decay_from) // interval), 0)


class OutlierDetector:
    """Tracks consecutive errors per endpoint of one service and ejects outliers."""

    __slots__ = ("_clock", "_ejected", "_hosts", "_known", "_next_expiry", "_on_eject", "policy")

    def __init__(
        self,
        policy: OutlierDetection | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_eject: OnEject | None = None,
    ) -> None:
        """Create a detector; with *policy* None it never ejects anything.

        Args:
            policy: the service's ``outlierDetection``, or None when it has none.
            clock: monotonic seconds; injectable for tests.
            on_eject: called on every ejection, for metrics; its exceptions are swallowed.
        """
        self.policy = policy
        self._clock = clock
        self._on_eject = on_eject
        self._hosts: dict[str, _Host] = {}
        self._known: frozenset[str] = _NONE
        self._ejected: frozenset[str] = _NONE
        self._next_expiry = math.inf

    @property
    def enabled(self) -> bool:
        """Whether the service has outlier detection (without it, nothing is ejected)."""
        return self.policy is not None

    def set_endpoints(self, authorities: Iterable[str]) -> None:
        """Declare the service's current endpoints; state of the others is forgotten.

        Cheap when the set is unchanged, so it may be called on every request.
        """
        if self.policy is None:
            return
        known = frozenset(authorities)
        if known == self._known:
            return
        self._known = known
        for authority in [a for a in self._hosts if a not in known]:
            self._hosts.pop(authority, None)
        self._refresh(self._clock())

    def record(self, authority: str, outcome: Outcome) -> None:
        """Count how a call to *authority* ended; may eject it."""
        policy = self.policy
        if policy is None:
            return
        host = self._hosts.get(authority)
        if not is_failure(outcome):
            if host is not None and (host.server_errors or host.gw_errors):
                host.server_errors = host.gw_errors = 0
            return
        now = self._clock()
        if host is None:
            host = self._hosts.setdefault(authority, _Host())
        if host.ejected_until > now:
            return
        interval = policy.interval
        if host.server_errors == 0 or now - host.server_since > interval:
            host.server_errors = 0
            host.server_since = now
        host.server_errors += 1
        if outcome.kind != "status" or outcome.status in GATEWAY_ERROR_STATUSES:
            if host.gw_errors == 0 or now - host.gw_since > interval:
                host.gw_errors = 0
                host.gw_since = now
            host.gw_errors += 1
        else:
            host.gw_errors = 0
        if (
            host.server_errors >= policy.consecutive_5xx
            or host.gw_errors >= policy.consecutive_gateway_errors
        ):
            self._try_eject(authority, host, policy, now)

    def _try_eject(self, authority: str, host: _Host, policy: OutlierDetection, now: float) -> None:
        ejected = self.ejected()
        total = len(self._known) if self._known else len(self._hosts)
        if (len(ejected) + 1) * 100 > policy.max_ejection_percent * total:
            return  # over the cap: keep the streak, try again at the next error
        base = policy.base_ejection_time
        cap = max(DEFAULT_MAX_EJECTION_TIME, base)
        host.ejections = min(_decayed(host, now, policy.interval) + 1, math.ceil(cap / base))
        duration = min(base * host.ejections, cap)
        host.ejected_until = now + duration
        host.decay_from = host.ejected_until
        host.server_errors = host.gw_errors = 0
        self._ejected = ejected | {authority}
        self._next_expiry = min(self._next_expiry, host.ejected_until)
        if self._on_eject is not None:
            with contextlib.suppress(Exception):  # telemetry never fails a request
                self._on_eject(authority, duration)

    def _refresh(self, now: float) -> None:
        ejected: list[str] = []
        next_expiry = math.inf
        for authority, host in self._hosts.items():
            if host.ejected_until > now:
                ejected.append(authority)
                next_expiry = min(next_expiry, host.ejected_until)
        self._ejected = frozenset(ejected) if ejected else _NONE
        self._next_expiry = next_expiry

    def ejected(self) -> frozenset[str]:
        """Authorities ejected now. Cached: recomputed only when the earliest ejection ends."""
        now = self._clock()
        if now >= self._next_expiry:
            self._refresh(now)
        return self._ejected

    def is_ejected(self, authority: str) -> bool:
        """Whether *authority* is ejected now."""
        return authority in self.ejected()

    def ejection_count(self, authority: str) -> int:
        """How many ejections *authority* has to its name now (after decay); for metrics."""
        host = self._hosts.get(authority)
        if host is None or self.policy is None:
            return 0
        return _decayed(host, self._clock(), self.policy.interval)

    def __repr__(self) -> str:
        return f"<OutlierDetector ejected={sorted(self.ejected())}>"
