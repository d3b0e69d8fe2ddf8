"""The outbound side of a sidecar: listener and routes ``outbound``.

Route configuration ``outbound`` has one virtual host per service: the TrafficPolicy routes
(matches, timeouts, retries, faults, mirrors, weighted subsets), then the implicit ``default``
route. The clusters and endpoints they lead to are built by
:mod:`meshlib_control.xds.clusters` (re-exported here). Part of
:mod:`meshlib_control.xds.translate`.
"""

from __future__ import annotations

import re

from meshlib.policy.model import (
    DEFAULT_TIMEOUT,
    Backend,
    FaultPolicy,
    HeaderMatch,
    RetryPolicy,
    Route,
    RouteMatch,
)
from meshlib.policy.routing import DEFAULT_ROUTE_NAME
from meshlib.policy.snapshot import ServiceEntry, Snapshot
from meshlib_control.xds.clusters import is_ip, outbound_clusters
from meshlib_control.xds.common import (
    FAULT,
    FAULT_FILTER,
    OUTBOUND_LISTENER,
    OUTBOUND_ROUTES,
    Json,
    Notes,
    SidecarNode,
    address,
    cluster_name,
    duration,
    entry_path,
    entry_policy,
    hcm,
    methods_header,
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


def outbound_routes(snapshot: Snapshot, notes: Notes) -> Json:
    """Route configuration ``outbound``: one virtual host per service of *snapshot*."""
    hosts = []
    for entry in snapshot.services:
        policy = entry_policy(entry)
        routes: list[Json] = []
        for i, route in enumerate(policy.routes):
            routes.extend(_envoy_routes(entry, route, f"{entry_path(entry)}.routes[{i}]", notes))
        default = Route(name=DEFAULT_ROUTE_NAME)
        routes.extend(_envoy_routes(entry, default, f"{entry_path(entry)}.(default route)", notes))
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
