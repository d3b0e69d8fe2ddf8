"""The outbound side's clusters and endpoints: one cluster per service and per subset.

Each service has a cluster ``outbound|<svc>.<ns>`` and one per subset
(``outbound|<svc>.<ns>|<subset>``): EDS over ADS, mTLS checking the service's exact SPIFFE
ID, outlier detection and circuit breakers from the policy, and a ClusterLoadAssignment that
prefers the node's zone. Part of :mod:`meshlib_control.xds.translate`.
"""

from __future__ import annotations

import ipaddress
import math

from meshlib.policy.model import (
    OutlierDetection,
    TrafficPolicySpec,
)
from meshlib.policy.snapshot import Endpoint, ServiceEntry, Snapshot
from meshlib_control.xds.common import (
    CONNECT_TIMEOUT,
    UPSTREAM_TLS,
    Json,
    Notes,
    SidecarNode,
    address,
    ads,
    cluster_name,
    common_tls,
    duration,
    entry_path,
    entry_policy,
    protocol_options,
)
from meshlib_control.xds.external import external_transport_socket

__all__ = ["is_ip", "outbound_clusters"]

_LB_POLICIES = {
    "ROUND_ROBIN": "ROUND_ROBIN",
    "RANDOM": "RANDOM",
    "LEAST_REQUEST": "LEAST_REQUEST",  # Envoy's default choice_count 2: the same P2C
    "P2C_EWMA": "LEAST_REQUEST",
}


_ZONE_OVERPROVISIONING = 10_000_000  # any healthy same-zone endpoint keeps all the traffic


def _outlier(policy: TrafficPolicySpec, where: str, notes: Notes) -> Json | None:
    od: OutlierDetection | None = policy.outlier_detection
    breaker = policy.circuit_breaker
    if od is not None:
        notes.add(
            f"{where}.outlierDetection.interval",
            "partial",
            "Envoy never restarts an error streak whose first error is older than interval",
        )
        if breaker is not None:
            notes.add(
                f"{where}.circuitBreaker",
                "ignored",
                "Envoy has no per-endpoint consecutive-failure breaker; with outlierDetection "
                "also set, only outlier detection is applied",
            )
        return {
            "consecutive_5xx": od.consecutive_5xx,
            "consecutive_gateway_failure": od.consecutive_gateway_errors,
            "enforcing_consecutive_5xx": 100,
            "enforcing_consecutive_gateway_failure": 100,  # Envoy's default is 0
            "enforcing_success_rate": 0,  # the library has no success-rate detector
            "interval": duration(od.interval),
            "base_ejection_time": duration(od.base_ejection_time),
            "max_ejection_percent": od.max_ejection_percent,
        }
    if breaker is None:
        return None
    notes.add(
        f"{where}.circuitBreaker",
        "mapped",
        "mapped to outlier detection (consecutive_5xx = consecutiveFailures, ejection for "
        "resetTimeout, up to 100 % of endpoints); Envoy re-admits the endpoint after the "
        "ejection, without a single half-open probe",
    )
    reset = duration(breaker.reset_timeout)
    return {
        "consecutive_5xx": breaker.consecutive_failures,
        "enforcing_consecutive_5xx": 100,
        "enforcing_consecutive_gateway_failure": 0,
        "enforcing_success_rate": 0,
        # Ejections end on an interval tick: keep the tick short next to resetTimeout.
        "interval": duration(min(1.0, breaker.reset_timeout)),
        "base_ejection_time": reset,
        "max_ejection_time": reset,
        "max_ejection_percent": 100,
    }


def _circuit_breakers(policy: TrafficPolicySpec, where: str, notes: Notes) -> Json:
    budget = policy.retry_budget
    pool = policy.connection_pool
    concurrency = max(1, math.ceil(budget.min_retries_per_second))
    notes.add(
        f"{where}.retryBudget",
        "mapped",
        f"Envoy's budget limits concurrent retries to {budget.percent} % of active requests "
        f"(minimum {concurrency} = ceil(minRetriesPerSecond)), not a share of the requests "
        "of the last ttl; ttl is ignored",
    )
    if policy.subsets:
        notes.add(
            f"{where}.connectionPool",
            "partial",
            "each subset is its own Envoy cluster, so the limits apply per subset as well as "
            "to the whole service",
        )
    return {
        "thresholds": [
            {
                "priority": "DEFAULT",
                "max_connections": pool.max_connections,
                "max_pending_requests": pool.max_pending,
                # HTTP/2 multiplexes: cap active requests as HTTP/1.1 connections would.
                "max_requests": pool.max_connections,
                "retry_budget": {
                    "budget_percent": {"value": budget.percent},
                    "min_retry_concurrency": concurrency,
                },
            }
        ]
    }


def _cluster(
    entry: ServiceEntry,
    subset: str | None,
    node: SidecarNode,
    policy: TrafficPolicySpec,
    outlier: Json | None,
    breakers: Json,
    notes: Notes,
) -> Json:
    name = cluster_name(entry.name, entry.namespace, subset)
    cluster: Json = {
        "name": name,
        "type": "EDS",
        "eds_cluster_config": {"eds_config": ads(), "service_name": name},
        "connect_timeout": CONNECT_TIMEOUT,
        "lb_policy": _LB_POLICIES[policy.load_balancer],
        "circuit_breakers": breakers,
        "typed_extension_protocol_options": protocol_options(),
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": UPSTREAM_TLS,
                "sni": f"{entry.name}.{entry.namespace}.svc.{node.trust_domain}",
                "common_tls_context": common_tls(node, {"exact": entry.spiffe_id}),
            },
        },
    }
    if entry.external is not None:  # an ExternalService: no mesh identity upstream
        socket = external_transport_socket(
            entry.external, entry_path(entry).removesuffix(".spec"), notes
        )
        if socket is None:
            del cluster["transport_socket"]
        else:
            cluster["transport_socket"] = socket
    if outlier is not None:
        cluster["outlier_detection"] = outlier
    return cluster


def is_ip(address: str) -> bool:
    """True for an IPv4 or IPv6 address (EDS endpoints and STATIC clusters need one)."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _load_assignment(
    name: str, endpoints: tuple[Endpoint, ...], node: SidecarNode, where: str, notes: Notes
) -> Json:
    groups: dict[tuple[int, str], list[Json]] = {}
    local_zone = node.zone if any(e.zone == node.zone for e in endpoints) else None
    for e in endpoints:
        if not is_ip(e.address):
            notes.add(
                f"{where}.endpoints[{e.id}]",
                "ignored",
                f"address {e.address!r} is not an IP address; EDS endpoints must be",
            )
            continue
        priority = 0 if local_zone is None or e.zone == local_zone else 1
        lb = {"endpoint": {"address": address(e.address, e.port)}}
        groups.setdefault((priority, e.zone or ""), []).append(lb)
    localities = []
    for (priority, zone), lbs in sorted(groups.items()):
        group: Json = {"lb_endpoints": lbs}
        if zone:
            group["locality"] = {"zone": zone}
        if priority:
            group["priority"] = priority
        localities.append(group)
    cla: Json = {"cluster_name": name, "endpoints": localities}
    if local_zone is not None:
        # Same zone first while any same-zone endpoint is healthy, as the library does.
        cla["policy"] = {"overprovisioning_factor": _ZONE_OVERPROVISIONING}
    return cla


def outbound_clusters(
    snapshot: Snapshot, node: SidecarNode, notes: Notes
) -> tuple[list[Json], list[Json]]:
    """The clusters of every service and subset, and a ClusterLoadAssignment for each."""
    clusters: list[Json] = []
    assignments: list[Json] = []
    for entry in snapshot.services:
        policy = entry_policy(entry)
        where = entry_path(entry)
        if policy.load_balancer == "P2C_EWMA":
            notes.add(
                f"{where}.loadBalancer",
                "mapped",
                "P2C_EWMA → LEAST_REQUEST: Envoy compares outstanding requests, not "
                "peak-EWMA latency",
            )
        members: list[tuple[str | None, tuple[Endpoint, ...]]] = [(None, entry.endpoints)]
        for subset in policy.subsets:
            wanted = set(subset.labels)
            members.append(
                (subset.name, tuple(e for e in entry.endpoints if wanted.issubset(e.labels)))
            )
        for subset_name, endpoints in members:
            # Built per cluster: no dict is shared between two resources.
            outlier = _outlier(policy, where, notes)
            breakers = _circuit_breakers(policy, where, notes)
            cluster = _cluster(entry, subset_name, node, policy, outlier, breakers, notes)
            clusters.append(cluster)
            assignments.append(_load_assignment(cluster["name"], endpoints, node, where, notes))
    return clusters, assignments
