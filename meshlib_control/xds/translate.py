"""PURE translator: one workload's :class:`~meshlib.policy.snapshot.Snapshot` → Envoy v3.

The output is plain dicts with Envoy's JSON/YAML field names (what ``json_format.ParseDict``
and ``envoy -c`` accept), so this module needs neither protobuf nor Envoy. Same snapshot and
node → equal dicts, in the same order: no I/O, no clock, no randomness.

Resources for one sidecar (names are constants below):

* listener ``inbound`` (``node.inbound_address:inbound_port``): mTLS with the node's SVID
  (SDS), client certificates of the trust domain required, XFCC set for the app, RBAC from
  the AuthorizationPolicies (a DENY filter before an ALLOW one), local rate limit, routed to
  cluster ``inbound|app`` (``127.0.0.1:app_port``). PERMISSIVE adds a plaintext filter chain
  selected by ``tls_inspector``.
* listener ``outbound`` (``127.0.0.1:outbound_port``): route configuration ``outbound``, one
  virtual host per service, the TrafficPolicy routes, then the implicit ``default`` route.
* clusters ``outbound|<svc>.<ns>`` and ``outbound|<svc>.<ns>|<subset>`` (EDS over ADS, mTLS
  checking the service's exact SPIFFE ID) and one ClusterLoadAssignment for each.

Whatever Envoy cannot do exactly as the library does is listed in
:attr:`EnvoyResources.unsupported` (DESIGN.md invariant 5); ``docs/sidecar.md`` has the
field-by-field matrix.
"""

from __future__ import annotations

import copy
import ipaddress
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from meshlib.errors import ConfigError
from meshlib.policy.model import (
    DEFAULT_TIMEOUT,
    AuthorizationPolicySpec,
    AuthzRule,
    Backend,
    FaultPolicy,
    HeaderMatch,
    OutlierDetection,
    RateLimitSpec,
    Resource,
    RetryPolicy,
    Route,
    RouteMatch,
    TrafficPolicySpec,
)
from meshlib.policy.routing import DEFAULT_ROUTE_NAME
from meshlib.policy.snapshot import Endpoint, ServiceEntry, Snapshot
from meshlib_control.xds.unsupported import Unsupported

__all__ = [
    "BUNDLE_SECRET_FILE",
    "CONNECT_TIMEOUT",
    "INBOUND_LISTENER",
    "INBOUND_ROUTES",
    "LOCAL_APP_CLUSTER",
    "OUTBOUND_LISTENER",
    "OUTBOUND_ROUTES",
    "SVID_SECRET_FILE",
    "TYPE_URLS",
    "EnvoyResources",
    "SidecarNode",
    "cluster_name",
    "glob_to_re2",
    "sds_secret_config",
    "translate",
]

Json: TypeAlias = dict[str, Any]

INBOUND_LISTENER = "inbound"
OUTBOUND_LISTENER = "outbound"
INBOUND_ROUTES = "inbound"
OUTBOUND_ROUTES = "outbound"
LOCAL_APP_CLUSTER = "inbound|app"
CONNECT_TIMEOUT = "5s"
"""Envoy's default, spelled out; the library has no separate connect timeout (the call's
deadline bounds the connect)."""

TYPE_URLS = {
    "listeners": "type.googleapis.com/envoy.config.listener.v3.Listener",
    "routes": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    "clusters": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "endpoints": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    "secrets": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
}

_T = "type.googleapis.com/envoy.extensions."
_HCM = _T + "filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = _T + "filters.http.router.v3.Router"
_RBAC = _T + "filters.http.rbac.v3.RBAC"
_FAULT = _T + "filters.http.fault.v3.HTTPFault"
_LOCAL_RATELIMIT = _T + "filters.http.local_ratelimit.v3.LocalRateLimit"
_TLS_INSPECTOR = _T + "filters.listener.tls_inspector.v3.TlsInspector"
_DOWNSTREAM_TLS = _T + "transport_sockets.tls.v3.DownstreamTlsContext"
_UPSTREAM_TLS = _T + "transport_sockets.tls.v3.UpstreamTlsContext"
_HTTP_OPTIONS = _T + "upstreams.http.v3.HttpProtocolOptions"
_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
FAULT_FILTER = "envoy.filters.http.fault"
SVID_SECRET_FILE = "svid.yaml"
BUNDLE_SECRET_FILE = "bundle.yaml"


def _ads() -> Json:
    """A fresh ConfigSource (``ads``): callers may mutate what we return."""
    return {"ads": {}, "resource_api_version": "V3"}


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
_MIN_FILL_INTERVAL = 0.05  # Envoy's lower bound for a token bucket's fill_interval
_ZONE_OVERPROVISIONING = 10_000_000  # any healthy same-zone endpoint keeps all the traffic
# Constructs Python's re accepts and RE2 (Envoy's safe_regex) rejects.
_NOT_RE2 = re.compile(r"\(\?[=!]|\(\?<[=!]|\(\?P=|\(\?\(|\\[1-9]|\\Z|[*+?}]\+")


@dataclass(frozen=True, slots=True)
class SidecarNode:
    """The sidecar a translation is for.

    Attributes:
        service, namespace, trust_domain: the workload's identity (must equal the
            snapshot's).
        inbound_port: where the sidecar accepts mesh traffic (mTLS).
        app_port: the application's plaintext port on 127.0.0.1.
        outbound_port: where the application sends its outgoing calls (127.0.0.1).
        inbound_address: the inbound listener's address.
        zone: this workload's ``zone`` label: same-zone endpoints are preferred, as the
            library does.
        secrets_dir: where the sidecar agent keeps the SDS files of the SVID and the trust
            bundle (:data:`SVID_SECRET_FILE`, :data:`BUNDLE_SECRET_FILE`); Envoy watches the
            directory and picks up a rotation on the next handshake. None: the secrets are
            expected over ADS (what the static rendering for validation uses).
    """

    service: str
    namespace: str
    trust_domain: str
    inbound_port: int
    app_port: int
    outbound_port: int
    inbound_address: str = "0.0.0.0"
    zone: str | None = None
    secrets_dir: str | None = None

    @property
    def spiffe_id(self) -> str:
        """The workload's SPIFFE ID: also the name of its SVID secret."""
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service}"

    @property
    def bundle_secret(self) -> str:
        """The name of the trust bundle secret: the trust domain's own ID."""
        return f"spiffe://{self.trust_domain}"


@dataclass(frozen=True, slots=True)
class EnvoyResources:
    """One sidecar's Envoy resources, in Envoy's JSON field names.

    Attributes:
        version: the snapshot version they were translated from.
        listeners, routes, clusters, endpoints: Listener, RouteConfiguration, Cluster and
            ClusterLoadAssignment dicts (no ``@type`` at the top level).
        secret_names: the SDS secrets referenced (the SVID, then the trust bundle).
        unsupported: policy fields the sidecar does not honour exactly.
    """

    version: str
    listeners: tuple[Json, ...]
    routes: tuple[Json, ...]
    clusters: tuple[Json, ...]
    endpoints: tuple[Json, ...]
    secret_names: tuple[str, ...]
    unsupported: tuple[Unsupported, ...] = field(default=())


def cluster_name(service: str, namespace: str, subset: str | None = None) -> str:
    """``outbound|<svc>.<ns>`` for every endpoint, ``outbound|<svc>.<ns>|<subset>``."""
    base = f"outbound|{service}.{namespace}"
    return base if subset is None else f"{base}|{subset}"


# --- small converters ----------------------------------------------------------------------


def _duration(seconds: float) -> str:
    nanos = round(seconds * 1_000_000_000)
    whole, frac = divmod(nanos, 1_000_000_000)
    return f"{whole}s" if frac == 0 else f"{whole}.{frac:09d}".rstrip("0") + "s"


class _Notes:
    """Collects :class:`Unsupported` entries once each, in the order they were found."""

    def __init__(self) -> None:
        self._items: dict[Unsupported, None] = {}

    def add(self, path: str, kind: Literal["mapped", "partial", "ignored"], reason: str) -> None:
        self._items.setdefault(Unsupported(path, kind, reason))

    def result(self) -> tuple[Unsupported, ...]:
        return tuple(self._items)


def _percent(value: float, path: str, notes: _Notes) -> Json:
    numerator = round(value * 10_000)
    if abs(numerator / 10_000 - value) > 1e-9:
        notes.add(path, "mapped", f"{value} % rounded to {numerator / 10_000} % (1e-6 steps)")
    return {"numerator": numerator, "denominator": "MILLION"}


def glob_to_re2(pattern: str, *, star: str = ".*", one: str = ".") -> str:
    """An RE2 regex that fully matches what ``fnmatch`` pattern *pattern* matches.

    ``*`` and ``?`` become *star* and *one*; ``[seq]`` / ``[!seq]`` become classes; an
    unclosed ``[`` is literal, as in :func:`fnmatch.translate`.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            while i < n and pattern[i] == "*":
                i += 1
            out.append(star)
        elif c == "?":
            out.append(one)
        elif c == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))
                continue
            body = pattern[i:j]
            i = j + 1
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            escaped = "".join("\\" + ch if ch in "\\[]^" else ch for ch in body)
            out.append(f"[{'^' if negate else ''}{escaped}]")
        else:
            out.append(re.escape(c))
    return "".join(out)


def _globs_regex(patterns: Iterable[str], **kw: str) -> str:
    parts = [glob_to_re2(p, **kw) for p in patterns]
    return parts[0] if len(parts) == 1 else "|".join(f"(?:{p})" for p in parts)


def _regex_matcher(regex: str) -> Json:
    return {"safe_regex": {"regex": regex}}


def _header(h: HeaderMatch) -> Json:
    if h.kind == "present":
        return {"name": h.name, "present_match": True}
    if h.kind == "regex":
        return {"name": h.name, "string_match": _regex_matcher(h.value)}
    return {"name": h.name, "string_match": {"exact": h.value}}


def _methods_header(methods: Iterable[str]) -> Json:
    listed = sorted(methods)
    if len(listed) == 1:
        return {"name": ":method", "string_match": {"exact": listed[0]}}
    return {"name": ":method", "string_match": _regex_matcher("|".join(listed))}


def _check_re2(regex: str, path: str, notes: _Notes) -> None:
    if _NOT_RE2.search(regex):
        notes.add(
            path,
            "ignored",
            "uses Python-only regex syntax (lookaround, backreference, \\Z, possessive); "
            "Envoy's RE2 rejects it, so the sidecar NACKs this configuration and keeps its "
            "previous one",
        )


# --- inbound -------------------------------------------------------------------------------


def _applicable_authz(snapshot: Snapshot, node: SidecarNode) -> list[tuple[str, Resource]]:
    # The same selection and order as meshlib.policy.authz.Authorizer.
    selected = [
        (f"{r.metadata.namespace}/{r.metadata.name}", r)
        for r in snapshot.inbound.authorization
        if isinstance(r.spec, AuthorizationPolicySpec)
        and r.metadata.namespace == node.namespace
        and r.spec.service in (None, node.service)
    ]
    return sorted(selected, key=lambda item: item[0])


def _rbac_permission(rule: AuthzRule) -> Json:
    parts: list[Json] = []
    if rule.methods:
        parts.append({"header": _methods_header(rule.methods)})
    if rule.paths:
        # url_path: the path without its query string, as the library matches it.
        parts.append({"url_path": {"path": _regex_matcher(_globs_regex(rule.paths))}})
    if not parts:
        return {"any": True}
    return parts[0] if len(parts) == 1 else {"and_rules": {"rules": parts}}


def _rbac_principal(rule: AuthzRule, trust_domain: str) -> Json:
    parts: list[Json] = []
    if rule.principals:
        regex = _globs_regex(rule.principals)
        parts.append({"authenticated": {"principal_name": _regex_matcher(regex)}})
    if rule.namespaces:
        ns = _globs_regex(rule.namespaces, star="[^/]*", one="[^/]")
        regex = f"spiffe://{re.escape(trust_domain)}/ns/(?:{ns})/sa/[^/]+"
        parts.append({"authenticated": {"principal_name": _regex_matcher(regex)}})
    if not parts:
        return {"any": True}
    # "authenticated" never matches a plaintext connection: like the library, a rule that
    # lists principals or namespaces never matches a plaintext caller.
    return parts[0] if len(parts) == 1 else {"and_ids": {"ids": parts}}


def _rbac_filters(snapshot: Snapshot, node: SidecarNode, notes: _Notes) -> list[Json]:
    selected = _applicable_authz(snapshot, node)
    filters: list[Json] = []
    for action in ("DENY", "ALLOW"):
        policies: Json = {}
        present = False
        for pid, res in selected:
            spec = res.spec
            assert isinstance(spec, AuthorizationPolicySpec)
            if spec.action != action:
                continue
            present = True
            for i, rule in enumerate(spec.rules):
                if rule.paths:
                    notes.add(
                        f"inbound.authorization[{pid}].spec.rules[{i}].to.paths",
                        "partial",
                        "Envoy matches the RFC 3986-normalised request path (dot segments "
                        "removed, %-escapes of unreserved characters decoded); the library "
                        "matches the ASGI path (every %-escape decoded, dot segments kept)",
                    )
                policies[f"{pid} {rule.name}"] = {
                    "permissions": [_rbac_permission(rule)],
                    "principals": [_rbac_principal(rule, node.trust_domain)],
                }
        # A DENY filter is needed only for rules; an ALLOW policy with no rule still denies
        # everything, so its (empty) ALLOW filter must be there.
        if (action == "DENY" and policies) or (action == "ALLOW" and present):
            filters.append(
                {
                    "name": f"envoy.filters.http.rbac.{action.lower()}",
                    "typed_config": {
                        "@type": _RBAC,
                        "rules": {"action": action, "policies": policies},
                    },
                }
            )
    return filters


def _rate_limit_filter(res: Resource, notes: _Notes) -> Json:
    spec = res.spec
    assert isinstance(spec, RateLimitSpec)
    where = f"inbound.rateLimit[{res.metadata.namespace}/{res.metadata.name}].spec"
    rate = spec.requests_per_second
    tokens = max(1, math.ceil(rate * _MIN_FILL_INTERVAL - 1e-9))
    interval = tokens / rate
    notes.add(
        f"{where}.requestsPerSecond",
        "mapped",
        f"Envoy refills {tokens} token(s) every {_duration(interval)} instead of continuously",
    )
    retry_after = max(1, math.ceil(interval))
    notes.add(
        where,
        "partial",
        f"the 429 carries a fixed 'retry-after: {retry_after}', not the time to the next token",
    )
    if spec.per_caller:
        notes.add(
            f"{where}.perCaller",
            "ignored",
            "the sidecar keeps one bucket for the instance, not one per caller identity",
        )
    enabled = {
        "default_value": {"numerator": 100, "denominator": "HUNDRED"},
        "runtime_key": "inbound_rate_limit_enabled",
    }
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": _LOCAL_RATELIMIT,
            "stat_prefix": "inbound_rate_limit",
            "token_bucket": {
                "max_tokens": spec.burst,
                "tokens_per_fill": tokens,
                "fill_interval": _duration(interval),
            },
            "filter_enabled": enabled,
            "filter_enforced": {**enabled, "runtime_key": "inbound_rate_limit_enforced"},
            "response_headers_to_add": [
                {
                    "header": {"key": "retry-after", "value": str(retry_after)},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ],
        },
    }


def _router() -> Json:
    return {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}


def _hcm(stat_prefix: str, routes: str, filters: list[Json], *, xfcc: str | None) -> Json:
    config: Json = {
        "@type": _HCM,
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "rds": {"route_config_name": routes, "config_source": _ads()},
        "http_filters": [*filters, _router()],
        "normalize_path": True,
    }
    if xfcc == "SANITIZE_SET":
        config["forward_client_cert_details"] = "SANITIZE_SET"
        config["set_current_client_cert_details"] = {"uri": True}
    elif xfcc is not None:
        config["forward_client_cert_details"] = xfcc
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": config}


def sds_secret_config(name: str, secrets_dir: str | None, filename: str) -> Json:
    """A reference to the secret *name*: a watched local file, or ADS without *secrets_dir*.

    The private key never leaves the sidecar's host: the control service does not have it,
    the agent writes it (0600) and Envoy reads it from the file.
    """
    if secrets_dir is None:
        return {"name": name, "sds_config": _ads()}
    return {
        "name": name,
        "sds_config": {
            "path_config_source": {
                "path": f"{secrets_dir}/{filename}",
                "watched_directory": {"path": secrets_dir},
            },
            "resource_api_version": "V3",
        },
    }


def _common_tls(node: SidecarNode, san: Json) -> Json:
    svid = sds_secret_config(node.spiffe_id, node.secrets_dir, SVID_SECRET_FILE)
    bundle = sds_secret_config(node.bundle_secret, node.secrets_dir, BUNDLE_SECRET_FILE)
    return {
        "tls_certificate_sds_secret_configs": [svid],
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": san}]
            },
            "validation_context_sds_secret_config": bundle,
        },
    }


def _address(host: str, port: int) -> Json:
    return {"socket_address": {"address": host, "port_value": port}}


def _inbound_listener(snapshot: Snapshot, node: SidecarNode, notes: _Notes) -> Json:
    filters = _rbac_filters(snapshot, node, notes)
    if snapshot.inbound.rate_limit is not None:
        filters.append(_rate_limit_filter(snapshot.inbound.rate_limit, notes))
    common = _common_tls(node, {"prefix": f"spiffe://{node.trust_domain}/"})
    common["alpn_protocols"] = ["h2", "http/1.1"]
    tls_chain: Json = {
        "name": "mtls",
        "filters": [_hcm("inbound", INBOUND_ROUTES, filters, xfcc="SANITIZE_SET")],
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _DOWNSTREAM_TLS,
                "require_client_certificate": True,
                "common_tls_context": common,
            },
        },
    }
    listener: Json = {
        "name": INBOUND_LISTENER,
        "address": _address(node.inbound_address, node.inbound_port),
        "traffic_direction": "INBOUND",
        "filter_chains": [tls_chain],
    }
    if snapshot.inbound.peer_mode == "PERMISSIVE":
        notes.add(
            "inbound.peerMode",
            "mapped",
            "PERMISSIVE: the sidecar admits plaintext on its inbound port itself (told apart "
            "by tls_inspector); a library instance serves plaintext on a separate port",
        )
        tls_chain["filter_chain_match"] = {"transport_protocol": "tls"}
        listener["listener_filters"] = [
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {"@type": _TLS_INSPECTOR},
            }
        ]
        listener["filter_chains"].append(
            {
                "name": "plaintext",
                "filter_chain_match": {"transport_protocol": "raw_buffer"},
                # SANITIZE: a plaintext caller must not pass off an XFCC of its own.
                "filters": [
                    _hcm(
                        "inbound_plaintext", INBOUND_ROUTES, copy.deepcopy(filters), xfcc="SANITIZE"
                    )
                ],
            }
        )
    return listener


def _inbound_routes() -> Json:
    return {
        "name": INBOUND_ROUTES,
        "virtual_hosts": [
            {
                "name": "inbound",
                "domains": ["*"],
                "routes": [
                    {
                        "name": "app",
                        "match": {"prefix": "/"},
                        # The server side sets no deadline of its own, as in the library.
                        "route": {"cluster": LOCAL_APP_CLUSTER, "timeout": "0s"},
                    }
                ],
            }
        ],
    }


def _protocol_options() -> Json:
    # HTTP/1.1 in → HTTP/1.1 out, HTTP/2 (gRPC) in → HTTP/2 out.
    return {
        _HTTP_OPTIONS_KEY: {
            "@type": _HTTP_OPTIONS,
            "use_downstream_protocol_config": {
                "http_protocol_options": {},
                "http2_protocol_options": {},
            },
        }
    }


def _local_app_cluster(node: SidecarNode) -> Json:
    return {
        "name": LOCAL_APP_CLUSTER,
        "type": "STATIC",
        "connect_timeout": CONNECT_TIMEOUT,
        "typed_extension_protocol_options": _protocol_options(),
        "load_assignment": {
            "cluster_name": LOCAL_APP_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _address("127.0.0.1", node.app_port)}}]}
            ],
        },
    }


# --- outbound: routes ----------------------------------------------------------------------


def _route_match(match: RouteMatch, where: str, notes: _Notes) -> Json:
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
        headers.append(_methods_header(match.methods))
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
        policy["per_try_timeout"] = _duration(r.per_try_timeout)
    policy["retry_back_off"] = {
        "base_interval": _duration(r.backoff.base_interval),
        "max_interval": _duration(max(r.backoff.max_interval, r.backoff.base_interval)),
    }
    if not r.allow_non_idempotent:
        # DESIGN.md invariant 6: Envoy retries only requests matching one of these.
        policy["retriable_request_headers"] = [
            {"name": ":method", "string_match": _regex_matcher("|".join(IDEMPOTENT_METHODS))},
            {"name": IDEMPOTENCY_KEY_HEADER, "string_match": _regex_matcher(".+")},
        ]
    return policy


def _fault_config(fault: FaultPolicy, where: str, notes: _Notes, *, grpc: bool) -> Json:
    config: Json = {"@type": _FAULT}
    if fault.delay is not None:
        config["delay"] = {
            "fixed_delay": _duration(fault.delay.fixed_delay),
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


def _envoy_routes(entry: ServiceEntry, route: Route, where: str, notes: _Notes) -> list[Json]:
    action: Json = {}
    clusters = _backend_clusters(entry, route.backends)
    if len(clusters) == 1:
        action["cluster"] = clusters[0][0]
    else:
        action["weighted_clusters"] = {
            "clusters": [{"name": name, "weight": weight} for name, weight in clusters]
        }
    action["timeout"] = _duration(route.timeout if route.timeout is not None else DEFAULT_TIMEOUT)
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


def _outbound_routes(snapshot: Snapshot, notes: _Notes) -> Json:
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


def _outbound_listener(node: SidecarNode) -> Json:
    fault = {"name": FAULT_FILTER, "typed_config": {"@type": _FAULT}}  # set per route
    return {
        "name": OUTBOUND_LISTENER,
        "address": _address("127.0.0.1", node.outbound_port),
        "traffic_direction": "OUTBOUND",
        "filter_chains": [{"filters": [_hcm("outbound", OUTBOUND_ROUTES, [fault], xfcc=None)]}],
    }


# --- outbound: clusters and endpoints ------------------------------------------------------


def _outlier(policy: TrafficPolicySpec, where: str, notes: _Notes) -> Json | None:
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
            "interval": _duration(od.interval),
            "base_ejection_time": _duration(od.base_ejection_time),
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
    reset = _duration(breaker.reset_timeout)
    return {
        "consecutive_5xx": breaker.consecutive_failures,
        "enforcing_consecutive_5xx": 100,
        "enforcing_consecutive_gateway_failure": 0,
        "enforcing_success_rate": 0,
        # Ejections end on an interval tick: keep the tick short next to resetTimeout.
        "interval": _duration(min(1.0, breaker.reset_timeout)),
        "base_ejection_time": reset,
        "max_ejection_time": reset,
        "max_ejection_percent": 100,
    }


def _circuit_breakers(policy: TrafficPolicySpec, where: str, notes: _Notes) -> Json:
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
        "eds_cluster_config": {"eds_config": _ads(), "service_name": name},
        "connect_timeout": CONNECT_TIMEOUT,
        "lb_policy": _LB_POLICIES[policy.load_balancer],
        "circuit_breakers": breakers,
        "typed_extension_protocol_options": _protocol_options(),
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _UPSTREAM_TLS,
                "sni": f"{entry.name}.{entry.namespace}.svc.{node.trust_domain}",
                "common_tls_context": _common_tls(node, {"exact": entry.spiffe_id}),
            },
        },
    }
    if outlier is not None:
        cluster["outlier_detection"] = outlier
    return cluster


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _load_assignment(
    name: str, endpoints: tuple[Endpoint, ...], node: SidecarNode, where: str, notes: _Notes
) -> Json:
    groups: dict[tuple[int, str], list[Json]] = {}
    local_zone = node.zone if any(e.zone == node.zone for e in endpoints) else None
    for e in endpoints:
        if not _is_ip(e.address):
            notes.add(
                f"{where}.endpoints[{e.id}]",
                "ignored",
                f"address {e.address!r} is not an IP address; EDS endpoints must be",
            )
            continue
        priority = 0 if local_zone is None or e.zone == local_zone else 1
        lb = {"endpoint": {"address": _address(e.address, e.port)}}
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


def _outbound_clusters(
    snapshot: Snapshot, node: SidecarNode, notes: _Notes
) -> tuple[list[Json], list[Json]]:
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


# --- entry point ---------------------------------------------------------------------------


def translate(snapshot: Snapshot, *, node: SidecarNode) -> EnvoyResources:
    """Translate *snapshot* into the Envoy resources of the sidecar *node*.

    Raises:
        ConfigError: *node* is not the workload the snapshot was built for.
    """
    got = (snapshot.service, snapshot.namespace, snapshot.trust_domain)
    want = (node.service, node.namespace, node.trust_domain)
    if got != want:
        raise ConfigError(f"snapshot is for {'/'.join(got)}, the sidecar node is {'/'.join(want)}")
    notes = _Notes()
    inbound = _inbound_listener(snapshot, node, notes)
    outbound_routes = _outbound_routes(snapshot, notes)
    clusters, assignments = _outbound_clusters(snapshot, node, notes)
    return EnvoyResources(
        version=snapshot.version,
        listeners=(inbound, _outbound_listener(node)),
        routes=(_inbound_routes(), outbound_routes),
        clusters=(_local_app_cluster(node), *clusters),
        endpoints=tuple(assignments),
        secret_names=(node.spiffe_id, node.bundle_secret),
        unsupported=notes.result(),
    )
