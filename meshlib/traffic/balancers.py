"""Load balancers: choose one endpoint among a service's endpoints, given live stats.

* :class:`RoundRobin` — each endpoint in turn.
* :class:`RandomBalancer` — uniformly at random.
* :class:`LeastRequest` — power of two choices on outstanding requests (the default).
* :class:`PeakEwma` — power of two choices on Linkerd's peak-EWMA cost,
  ``latency estimate * (pending + 1)``.

Statistics live in an :class:`EndpointStats` per endpoint authority, kept by a
:class:`StatsRegistry` across snapshots so that a policy update does not forget load.

There are no locks. Counters are plain attributes updated from event-loop callbacks and
worker threads; under the GIL a ``+=`` can lose an update when two threads interleave, which
skews one endpoint's load estimate by one request until the next update. Balancing is a
heuristic over noisy inputs, so that costs nothing that matters and a lock per request would.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from meshlib.errors import PolicyError
from meshlib.policy.model import EWMA_DECAY, LOAD_BALANCERS
from meshlib.policy.snapshot import Endpoint

__all__ = [
    "DEFAULT_RTT",
    "Balancer",
    "EndpointStats",
    "LeastRequest",
    "PeakEwma",
    "RandomBalancer",
    "RoundRobin",
    "StatsRegistry",
    "make_balancer",
    "prefer_zone",
]

DEFAULT_RTT = 0.03
"""Latency estimate, in seconds, of an endpoint with no sample yet (as Linkerd's default)."""


class EndpointStats:
    """Live load of one endpoint: outstanding requests and a peak-EWMA latency estimate."""

    __slots__ = ("_clock", "decay", "ewma", "failures", "pending", "requests", "updated_at")

    def __init__(
        self, *, decay: float = EWMA_DECAY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self.decay = decay
        self.pending = 0
        self.requests = 0
        self.failures = 0
        self.ewma = DEFAULT_RTT  # seconds
        self.updated_at = clock()

    def start(self) -> float:
        """Record a request leaving; returns the start time to hand to :meth:`finish`."""
        self.pending += 1
        return self._clock()

    def finish(self, start_ts: float, ok: bool = True) -> None:
        """Record the end of a request started at *start_ts*; observes its latency."""
        self.pending = max(self.pending - 1, 0)
        self.requests += 1
        if not ok:
            self.failures += 1
        now = self._clock()
        self.observe(now - start_ts, now)

    def observe(self, rtt: float, now: float | None = None) -> None:
        """Fold one latency sample in: a peak is taken at once, lower ones decay in."""
        now = self._clock() if now is None else now
        if rtt > self.ewma:
            self.ewma = rtt
        else:
            weight = math.exp(-max(now - self.updated_at, 0.0) / self.decay)
            self.ewma = self.ewma * weight + rtt * (1.0 - weight)
        self.updated_at = now

    def cost(self, now: float | None = None) -> float:
        """Peak-EWMA cost: the estimate, decayed toward 0 since the last sample, times load.

        Decaying with time lets an endpoint that was slow once be tried again (Linkerd does
        the same).
        """
        now = self._clock() if now is None else now
        weight = math.exp(-max(now - self.updated_at, 0.0) / self.decay)
        return self.ewma * weight * (self.pending + 1)


class StatsRegistry:
    """One :class:`EndpointStats` per endpoint authority (``address:port``)."""

    __slots__ = ("_clock", "_stats")

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._stats: dict[str, EndpointStats] = {}

    def get(self, authority: str) -> EndpointStats:
        """The stats of *authority*, created on first use."""
        stats = self._stats.get(authority)
        if stats is None:
            # setdefault: if two threads race here, both end up with the same object.
            stats = self._stats.setdefault(authority, EndpointStats(clock=self._clock))
        return stats

    def retain(self, authorities: Iterable[str]) -> None:
        """Forget the stats of every authority not in *authorities* (endpoints that left)."""
        keep = set(authorities)
        for authority in [a for a in self._stats if a not in keep]:
            self._stats.pop(authority, None)

    def __len__(self) -> int:
        return len(self._stats)


class Balancer(Protocol):
    """Picks one endpoint, or None when every endpoint is excluded."""

    def pick(
        self, endpoints: tuple[Endpoint, ...], exclude: frozenset[str] = frozenset()
    ) -> Endpoint | None:
        """Choose among *endpoints*, skipping those whose authority is in *exclude*."""
        ...


def _candidates(endpoints: tuple[Endpoint, ...], exclude: frozenset[str]) -> tuple[Endpoint, ...]:
    if not exclude:
        return endpoints
    return tuple(e for e in endpoints if e.authority not in exclude)


class RoundRobin:
    """Each candidate in turn (the rotation is shared across endpoint sets)."""

    def __init__(self) -> None:
        self._counter = itertools.count()  # next() on a count is atomic under the GIL

    def pick(
        self, endpoints: tuple[Endpoint, ...], exclude: frozenset[str] = frozenset()
    ) -> Endpoint | None:
        """Return the next candidate, or None."""
        candidates = _candidates(endpoints, exclude)
        if not candidates:
            return None
        return candidates[next(self._counter) % len(candidates)]


class RandomBalancer:
    """A uniformly random candidate."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(
        self, endpoints: tuple[Endpoint, ...], exclude: frozenset[str] = frozenset()
    ) -> Endpoint | None:
        """Return a random candidate, or None."""
        candidates = _candidates(endpoints, exclude)
        return self._rng.choice(candidates) if candidates else None


class _PowerOfTwo:
    """Sample two distinct candidates, keep the one with the lower load."""

    def __init__(self, stats: StatsRegistry, rng: random.Random | None = None) -> None:
        self._stats = stats
        self._rng = rng or random.Random()

    def _load(self, endpoint: Endpoint) -> float:
        raise NotImplementedError

    def pick(
        self, endpoints: tuple[Endpoint, ...], exclude: frozenset[str] = frozenset()
    ) -> Endpoint | None:
        """Return the less loaded of two random candidates, or None."""
        candidates = _candidates(endpoints, exclude)
        n = len(candidates)
        if n <= 1:
            return candidates[0] if n else None
        i = self._rng.randrange(n)
        j = self._rng.randrange(n - 1)
        if j >= i:
            j += 1
        a, b = candidates[i], candidates[j]
        return b if self._load(b) < self._load(a) else a


class LeastRequest(_PowerOfTwo):
    """P2C on outstanding requests."""

    def _load(self, endpoint: Endpoint) -> float:
        return self._stats.get(endpoint.authority).pending


class PeakEwma(_PowerOfTwo):
    """P2C on peak-EWMA cost (latency estimate times outstanding requests plus one)."""

    def _load(self, endpoint: Endpoint) -> float:
        return self._stats.get(endpoint.authority).cost()


def make_balancer(name: str, stats: StatsRegistry, rng: random.Random | None = None) -> Balancer:
    """Build the balancer a TrafficPolicy names (``loadBalancer``).

    Raises:
        PolicyError: *name* is not one of ROUND_ROBIN, RANDOM, LEAST_REQUEST, P2C_EWMA.
    """
    if name == "ROUND_ROBIN":
        return RoundRobin()
    if name == "RANDOM":
        return RandomBalancer(rng)
    if name == "LEAST_REQUEST":
        return LeastRequest(stats, rng)
    if name == "P2C_EWMA":
        return PeakEwma(stats, rng)
    raise PolicyError("loadBalancer", f"must be one of {', '.join(LOAD_BALANCERS)}, got {name!r}")


def prefer_zone(endpoints: tuple[Endpoint, ...], zone: str | None) -> tuple[Endpoint, ...]:
    """The endpoints in *zone* if there are any, else all of them."""
    if zone is None:
        return endpoints
    local = tuple(e for e in endpoints if e.zone == zone)
    return local or endpoints
