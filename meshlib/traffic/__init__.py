"""Traffic: endpoint selection (balancers, locality) over live per-endpoint statistics."""

from __future__ import annotations

from meshlib.traffic.balancers import (
    Balancer,
    EndpointStats,
    LeastRequest,
    PeakEwma,
    RandomBalancer,
    RoundRobin,
    StatsRegistry,
    make_balancer,
    prefer_zone,
)

__all__ = [
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
