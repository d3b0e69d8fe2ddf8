from __future__ import annotations

import random
from collections import Counter

import pytest

from meshlib.errors import PolicyError
from meshlib.policy.snapshot import Endpoint
from meshlib.traffic.balancers import (
    DEFAULT_RTT,
    EndpointStats,
    LeastRequest,
    PeakEwma,
    RandomBalancer,
    RoundRobin,
    StatsRegistry,
    make_balancer,
    prefer_zone,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ep(i: int, zone: str | None = None) -> Endpoint:
    labels = (("zone", zone),) if zone else ()
    return Endpoint(f"e{i}", f"10.0.0.{i}", 80, labels, "library", "spiffe://td/ns/a/sa/b")


EPS = tuple(ep(i) for i in range(1, 5))


def test_round_robin_cycles_through_endpoints() -> None:
    """Round robin returns each endpoint in turn."""
    rr = RoundRobin()
    assert [rr.pick(EPS) for _ in range(8)] == list(EPS) * 2


def test_random_is_roughly_uniform() -> None:
    """The random balancer spreads picks evenly (seeded)."""
    balancer = RandomBalancer(random.Random(3))
    counts = Counter(balancer.pick(EPS) for _ in range(8000))
    assert all(abs(counts[e] / 8000 - 0.25) < 0.03 for e in EPS)


@pytest.mark.parametrize("name", ["ROUND_ROBIN", "RANDOM", "LEAST_REQUEST", "P2C_EWMA"])
def test_every_balancer_honours_exclude_and_empty(name: str) -> None:
    """Excluded authorities are never picked; all excluded or no endpoint gives None."""
    balancer = make_balancer(name, StatsRegistry(), random.Random(0))
    skip = frozenset({EPS[0].authority, EPS[2].authority})
    picks = {balancer.pick(EPS, skip) for _ in range(200)}
    # P2C over two candidates always takes the cheaper one, so only a subset is guaranteed
    assert picks and picks <= {EPS[1], EPS[3]}
    assert balancer.pick(EPS, frozenset(e.authority for e in EPS)) is None
    assert balancer.pick(()) is None
    assert balancer.pick((EPS[0],)) == EPS[0]


def test_make_balancer_builds_the_named_class() -> None:
    """The factory maps policy names to balancers and refuses unknown names."""
    stats = StatsRegistry()
    assert isinstance(make_balancer("LEAST_REQUEST", stats), LeastRequest)
    assert isinstance(make_balancer("P2C_EWMA", stats), PeakEwma)
    with pytest.raises(PolicyError, match="loadBalancer"):
        make_balancer("FASTEST", stats)


def test_least_request_avoids_busy_endpoints() -> None:
    """P2C on pending never picks the busiest endpoint and favours idle ones."""
    stats = StatsRegistry()
    for _ in range(10):
        stats.get(EPS[0].authority).start()
    for _ in range(3):
        stats.get(EPS[1].authority).start()
    balancer = LeastRequest(stats, random.Random(5))
    counts = Counter(balancer.pick(EPS) for _ in range(6000))
    assert counts[EPS[0]] == 0  # always loses its comparison
    # with 4 endpoints, the idle ones win 5/12 each, the 3-pending one 2/12
    assert counts[EPS[2]] > counts[EPS[1]] * 2
    assert counts[EPS[3]] > counts[EPS[1]] * 2


def test_peak_ewma_avoids_slow_endpoints() -> None:
    """P2C on peak-EWMA cost steers traffic away from an endpoint that answered slowly."""
    clock = Clock()
    stats = StatsRegistry(clock=clock)
    slow = stats.get(EPS[0].authority)
    slow.observe(2.0)
    for e in EPS[1:]:
        stats.get(e.authority).observe(0.01)
    balancer = PeakEwma(stats, random.Random(9))
    counts = Counter(balancer.pick(EPS) for _ in range(3000))
    assert counts[EPS[0]] == 0


def test_peak_ewma_takes_peaks_at_once_and_decays_toward_lower_samples() -> None:
    """A higher sample replaces the estimate; lower ones blend in by exp(-elapsed/10s)."""
    clock = Clock()
    stats = EndpointStats(clock=clock)
    assert stats.ewma == DEFAULT_RTT
    stats.observe(1.0)
    assert stats.ewma == 1.0
    clock.now += 10.0  # one decay period: weight e^-1 on the old value
    stats.observe(0.0)
    assert stats.ewma == pytest.approx(0.36787944, rel=1e-6)
    stats.observe(0.0)  # no time elapsed: the sample has no weight
    assert stats.ewma == pytest.approx(0.36787944, rel=1e-6)


def test_cost_counts_pending_requests_and_decays_when_idle() -> None:
    """cost = decayed estimate * (pending + 1)."""
    clock = Clock()
    stats = EndpointStats(clock=clock)
    stats.observe(0.5)
    assert stats.cost() == 0.5
    stats.start()
    stats.start()
    assert stats.cost() == pytest.approx(1.5)
    clock.now += 10.0
    assert stats.cost() == pytest.approx(1.5 * 0.36787944, rel=1e-6)


def test_start_and_finish_track_pending_and_latency() -> None:
    """start() counts a pending request; finish() releases it and observes its latency."""
    clock = Clock()
    stats = EndpointStats(clock=clock)
    token = stats.start()
    assert stats.pending == 1
    clock.now += 0.2
    stats.finish(token, ok=False)
    assert stats.pending == 0
    assert stats.requests == 1 and stats.failures == 1
    assert stats.ewma == pytest.approx(0.2)
    stats.finish(token)  # an unbalanced finish never drives pending negative
    assert stats.pending == 0


def test_registry_keeps_one_stats_per_authority_and_prunes() -> None:
    """get() returns the same object per authority; retain() forgets departed endpoints."""
    stats = StatsRegistry()
    a = stats.get("10.0.0.1:80")
    assert stats.get("10.0.0.1:80") is a
    stats.get("10.0.0.2:80")
    stats.retain(["10.0.0.1:80"])
    assert len(stats) == 1
    assert stats.get("10.0.0.1:80") is a


def test_prefer_zone_keeps_local_endpoints_when_any() -> None:
    """Same-zone endpoints are preferred; with none (or no zone) all are returned."""
    eps = (ep(1, "a"), ep(2, "b"), ep(3, "a"), ep(4))
    assert prefer_zone(eps, "a") == (eps[0], eps[2])
    assert prefer_zone(eps, "c") == eps
    assert prefer_zone(eps, None) == eps
