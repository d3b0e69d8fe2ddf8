"""The outbound side of a sidecar: listener and routes ``outbound``, clusters, endpoints.

Route configuration ``outbound`` has one virtual host per service: the TrafficPolicy routes
(matches, timeouts, retries, faults, mirrors, weighted subsets), then the implicit ``default``
route. Each service has a cluster ``outbound|<svc>.<ns>`` and one per subset
(``outbound|<svc>.<ns>|<subset>``): EDS over ADS, mTLS checking the service's exact SPIFFE
ID, outlier detection and circuit breakers from the policy, and a ClusterLoadAssignment that
prefers the node's zone. Part of :mod:`meshlib_control.xds.translate`.
"""

from __future__ import annotations

import ipaddress
import math
import re

from meshlib.policy.model import (
    DEFAULT_TIMEOUT,
    Backend,
    FaultPolicy,
    HeaderMatch,
    OutlierDetection,
    RetryPolicy,
    Route,
    RouteMatch,
    TrafficPolicySpec,
)
from meshlib.policy.routing import DEFAULT_ROUTE_NAME
from meshlib.policy.snapshot import Endpoint, ServiceEntry, Snapshot
from meshlib_control.xds.common import (
    CONNECT_TIMEOUT,
    FAULT,
    FAULT_FILTER,
    OUTBOUND_LISTENER,
    OUTBOUND_ROUTES,
    UPSTREAM_TLS,
    Json,
    Notes,
    SidecarNode,
    address,
    ads,
    cluster_name,
    common_tls,
    duration,
    hcm,
    methods_header,
    protocol_options,
    regex_matcher,
)

__all__ = [
    "IDEMPOTENCY_KEY_HEADER",
    "IDEMPOTENT_METHODS",
    "is_ip",
    "outbound_clusters",
    "outbound_listener",
    "outbound_routes",
]

# meshlib_control may not import meshlib.resilience (DESIGN.md dependency direction); a test
# keeps this equal to meshlib.resilience.retry.IDEMPOTENT_METHODS.
IDEMPOTENT_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PUT", "TRACE")
IDEMPOTENCY_KEY_HEADER = "idempotency-key"

_LB_POLICIES = {
    "ROUND_ROBIN": "ROUND_ROBIN",
    "RANDOM": "RANDOM",
    "LEAST_REQUEST": "LEAST_REQUEST",  # Envoy's default choice_count 2: the same P2C
    "P2C_EWMA": "LEAST_REQUEST",
}
_ZONE_OVERPROVISIONING = 10_000_000  # any healthy same-zone endpoint keeps all the traffic
# Constructs Python's re accepts and RE2 (Envoy's safe_regex) rejects.
_NOT_RE2 = re.compile(r"\(\?[=!]|\(\?<[=!]|\(\?P=|\(\?\(|\\[1-9]|\\Z|[*+?}]\+")


# --- routes --------------------------------------------------------------------------------


def _percent(value: float, path: str, notes: Notes) -> Json:
    numerator = round(value * 10_000)
    if abs(numerator / 10_000 - value) > 1e-9:
        notes.add(path, "mapped", f"{value} % rounded to {numerator / 10_000} % (1e-6 steps)")
    return {"numerator": numerator, "denominator": "MILLION"}


def _header(h: HeaderMatch) -> Json:
    if h.kind == "present":
        return {"name": h.name, "present_match": True}
    if h.kind == "regex":
        return {"name": h.name, "string_match": regex_matcher(h.value)}
    return {"name": h.name, "string_match": {"exact": h.value}}


def _check_re2(regex: str, path: str, notes: Notes) -> None:
    if _NOT_RE2.search(regex):
        notes.add(
            path,
            "ignored",
            "uses Python-only regex syntax (lookaround, backreference, \\Z, possessive); "
            "Envoy's RE2 rejects it, so the sidecar NACKs this configuration and keeps its "
            "previous one",
        )


def _route_match(match: RouteMatch, where: str, notes: Notes) -> Json:
    out: Json = {}
    path = match.path
    if path is None:
        out["prefix"] = "/"
    elif path.kind == "exact":
        out["path"] = path.value
    elif path.kind == "prefix":
        out["prefix"] = path.value
    else:
        _check_re2(path.value, f"{where}.match.path.regex", notes)
        out["safe_regex"] = {"regex": path.value}
    headers = []
    if match.methods:
        headers.append(methods_header(match.methods))
    for i, h in enumerate(match.headers):
        if h.kind == "regex":
            _check_re2(h.value, f"{where}.match.headers[{i}].regex", notes)
        headers.append(_header(h))
    if headers:
        out["headers"] = headers
    return out


def _retry_policy(r: RetryPolicy) -> Json | None:
    if r.attempts == 0 or not r.retry_on:
        return None
    policy: Json = {"retry_on": ",".join(r.retry_on), "num_retries": r.attempts}
    if r.retriable_status_codes:
        policy["retriable_status_codes"] = list(r.retriable_status_codes)
    if r.per_try_timeout is not None:
        policy["per_try_timeout"] = duration(r.per_try_timeout)
    policy["retry_back_off"] = {
        "base_interval": duration(r.backoff.base_interval),
        "max_interval": duration(max(r.backoff.max_interval, r.backoff.base_interval)),
    }
    if not r.allow_non_idempotent:
        # DESIGN.md invariant 6: Envoy retries only requests matching one of these.
        policy["retriable_request_headers"] = [
            {"name": ":method", "string_match": regex_matcher("|".join(IDEMPOTENT_METHODS))},
            {"name": IDEMPOTENCY_KEY_HEADER, "string_match": regex_matcher(".+")},
        ]
    return policy


def _fault_config(fault: FaultPolicy, where: str, notes: Notes, *, grpc: bool) -> Json:
    config: Json = {"@type": FAULT}
    if fault.delay is not None:
        config["delay"] = {
            "fixed_delay": duration(fault.delay.fixed_delay),
            "percentage": _percent(fault.delay.percent, f"{where}.delay.percent", notes),
        }
    if fault.abort is not None:
        abort = fault.abort
        pct = _percent(abort.percent, f"{where}.abort.percent", notes)
        if grpc and abort.grpc_status is not None:
            config["abort"] = {"grpc_status": abort.grpc_status, "percentage": pct}
        else:
            config["abort"] = {"http_status": abort.http_status, "percentage": pct}
    if fault.headers:
        config["headers"] = [_header(h) for h in fault.headers]
    return config


def _backend_clusters(entry: ServiceEntry, backends: tuple[Backend, ...]) -> list[tuple[str, int]]:
    weights: dict[str, int] = {}
    for b in backends:
        if b.weight > 0:  # a zero weight is never picked: leaving it out is the same
            name = cluster_name(entry.name, entry.namespace, b.subset)
            weights[name] = weights.get(name, 0) + b.weight
    return list(weights.items())


def _envoy_routes(entry: ServiceEntry, route: Route, where: str, notes: Notes) -> list[Json]:
    action: Json = {}
    clusters = _backend_clusters(entry, route.backends)
    if len(clusters) == 1:
        action["cluster"] = clusters[0][0]
    else:
        action["weighted_clusters"] = {
            "clusters": [{"name": name, "weight": weight} for name, weight in clusters]
        }
    action["timeout"] = duration(route.timeout if route.timeout is not None else DEFAULT_TIMEOUT)
    retry = _retry_policy(route.retries)
    if retry is not None:
        action["retry_policy"] = retry
    if route.mirror is not None:
        action["request_mirror_policies"] = [
            {
                "cluster": cluster_name(entry.name, entry.namespace, route.mirror.subset),
                "runtime_fraction": {
                    "default_value": _percent(
                        route.mirror.percent, f"{where}.mirror.percent", notes
                    )
                },
                "disable_shadow_host_suffix_append": True,
            }
        ]
    match = _route_match(route.match, where, notes)
    base: Json = {"name": route.name, "match": match, "route": action}
    if retry is not None or route.mirror is not None:
        # Envoy buffers the body to replay it; past the limit it neither retries nor
        # mirrors, where the library skips only the retry.
        base["request_body_buffer_limit"] = route.retries.max_replay_bytes
        if route.mirror is not None:
            notes.add(
                f"{where}.retries.maxReplayBytes",
                "partial",
                "Envoy also stops mirroring a request whose body exceeds this limit",
            )
    if route.fault is None:
        return [base]
    fault = route.fault
    base["typed_per_filter_config"] = {
        FAULT_FILTER: _fault_config(fault, f"{where}.fault", notes, grpc=False)
    }
    if fault.abort is None or fault.abort.grpc_status is None:
        return [base]
    # One fault filter config aborts with either an HTTP or a gRPC status: gRPC requests get
    # a route of their own so each caller sees what the library would give it.
    grpc_match: Json = {
        **match,
        "headers": [
            *match.get("headers", []),
            {"name": "content-type", "string_match": {"prefix": "application/grpc"}},
        ],
    }
    grpc_route: Json = {
        **base,
        "name": f"{route.name}/grpc",
        "match": grpc_match,
        "typed_per_filter_config": {
            FAULT_FILTER: _fault_config(fault, f"{where}.fault", notes, grpc=True)
        },
    }
    return [grpc_route, base]


def _service_domains(entry: ServiceEntry, snapshot: Snapshot) -> list[str]:
    base = f"{entry.name}.{entry.namespace}"
    names = [base, f"{base}.svc", f"{base}.svc.{snapshot.trust_domain}"]
    if entry.namespace == snapshot.namespace:  # as PolicyEngine.resolve: bare name = ours
        names.insert(0, entry.name)
    # Host names with a trailing dot resolve too in the library.
    return [*names, *(f"{n}." for n in names)]


def _policy(entry: ServiceEntry) -> TrafficPolicySpec:
    if entry.traffic_policy is not None and isinstance(
        entry.traffic_policy.spec, TrafficPolicySpec
    ):
        return entry.traffic_policy.spec
    return TrafficPolicySpec(service=entry.name)


def _where(entry: ServiceEntry) -> str:
    return f"services[{entry.name}.{entry.namespace}].spec"


def outbound_routes(snapshot: Snapshot, notes: Notes) -> Json:
    """Route configuration ``outbound``: one virtual host per service of *snapshot*."""
    hosts = []
    for entry in snapshot.services:
        policy = _policy(entry)
        routes: list[Json] = []
        for i, route in enumerate(policy.routes):
            routes.extend(_envoy_routes(entry, route, f"{_where(entry)}.routes[{i}]", notes))
        default = Route(name=DEFAULT_ROUTE_NAME)
        routes.extend(_envoy_routes(entry, default, f"{_where(entry)}.(default route)", notes))
        hosts.append(
            {
                "name": f"{entry.name}.{entry.namespace}",
                "domains": _service_domains(entry, snapshot),
                "routes": routes,
            }
        )
    return {
        "name": OUTBOUND_ROUTES,
        # Host "orders:8080" matches domain "orders": the library ignores the port too.
        "ignore_port_in_host_matching": True,
        "virtual_hosts": hosts,
    }


def outbound_listener(node: SidecarNode) -> Json:
    """Listener ``outbound`` on ``127.0.0.1:outbound_port``, route configuration ``outbound``."""
    fault = {"name": FAULT_FILTER, "typed_config": {"@type": FAULT}}  # set per route
    return {
        "name": OUTBOUND_LISTENER,
        "address": address("127.0.0.1", node.outbound_port),
        "traffic_direction": "OUTBOUND",
        "filter_chains": [{"filters": [hcm("outbound", OUTBOUND_ROUTES, [fault], xfcc=None)]}],
    }


# --- clusters and endpoints ----------------------------------------------------------------


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
        policy = _policy(entry)
        where = _where(entry)
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
            cluster = _cluster(entry, subset_name, node, policy, outlier, breakers)
            clusters.append(cluster)
            assignments.append(_load_assignment(cluster["name"], endpoints, node, where, notes))
    return clusters, assignments
