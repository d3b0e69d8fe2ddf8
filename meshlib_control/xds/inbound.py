"""The inbound side of a sidecar: listener ``inbound``, its routes, the local app cluster.

The listener terminates mTLS with the node's SVID and requires a client certificate of the
trust domain, sets XFCC for the app, applies the AuthorizationPolicies as RBAC (a DENY filter
before an ALLOW one) and the local rate limit, and routes everything to ``inbound|app``
(``127.0.0.1:app_port``). PERMISSIVE adds a plaintext filter chain selected by
``tls_inspector``. Part of :mod:`meshlib_control.xds.translate`.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable

from meshlib.policy.model import AuthorizationPolicySpec, AuthzRule, RateLimitSpec, Resource
from meshlib.policy.snapshot import Snapshot
from meshlib_control.xds.common import (
    CONNECT_TIMEOUT,
    DOWNSTREAM_TLS,
    INBOUND_LISTENER,
    INBOUND_ROUTES,
    LOCAL_APP_CLUSTER,
    LOCAL_RATELIMIT,
    RBAC,
    TLS_INSPECTOR,
    Json,
    Notes,
    SidecarNode,
    address,
    common_tls,
    duration,
    hcm,
    methods_header,
    protocol_options,
    regex_matcher,
)
from meshlib_control.xds.jwt import (
    JWT_FILTER,
    audience_reply_mapper,
    claim_header_removal,
    end_user_ids,
    issuers,
    jwt_filter,
)

__all__ = ["glob_to_re2", "inbound_listener", "inbound_routes", "local_app_cluster"]

_MIN_FILL_INTERVAL = 0.05  # Envoy's lower bound for a token bucket's fill_interval


# --- RBAC ----------------------------------------------------------------------------------


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
        parts.append({"header": methods_header(rule.methods)})
    if rule.paths:
        # url_path: the path without its query string, as the library matches it.
        parts.append({"url_path": {"path": regex_matcher(_globs_regex(rule.paths))}})
    if not parts:
        return {"any": True}
    return parts[0] if len(parts) == 1 else {"and_rules": {"rules": parts}}


def _rbac_principal(rule: AuthzRule, trust_domain: str, known: tuple[str, ...] = ()) -> Json:
    parts: list[Json] = end_user_ids(rule, known)  # the verified JWT (xds/jwt.py)
    if rule.principals:
        regex = _globs_regex(rule.principals)
        parts.append({"authenticated": {"principal_name": regex_matcher(regex)}})
    if rule.namespaces:
        ns = _globs_regex(rule.namespaces, star="[^/]*", one="[^/]")
        regex = f"spiffe://{re.escape(trust_domain)}/ns/(?:{ns})/sa/[^/]+"
        parts.append({"authenticated": {"principal_name": regex_matcher(regex)}})
    if not parts:
        return {"any": True}
    # "authenticated" never matches a plaintext connection: like the library, a rule that
    # lists principals or namespaces never matches a plaintext caller.
    return parts[0] if len(parts) == 1 else {"and_ids": {"ids": parts}}


def _rbac_filters(snapshot: Snapshot, node: SidecarNode, notes: Notes) -> list[Json]:
    selected = _applicable_authz(snapshot, node)
    known = issuers(snapshot, node)
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
                    "principals": [_rbac_principal(rule, node.trust_domain, known)],
                }
        # A DENY filter is needed only for rules; an ALLOW policy with no rule still denies
        # everything, so its (empty) ALLOW filter must be there.
        if (action == "DENY" and policies) or (action == "ALLOW" and present):
            filters.append(
                {
                    "name": f"envoy.filters.http.rbac.{action.lower()}",
                    "typed_config": {
                        "@type": RBAC,
                        "rules": {"action": action, "policies": policies},
                    },
                }
            )
    return filters


# --- rate limit ----------------------------------------------------------------------------


def _rate_limit_filter(res: Resource, notes: Notes) -> Json:
    spec = res.spec
    assert isinstance(spec, RateLimitSpec)
    where = f"inbound.rateLimit[{res.metadata.namespace}/{res.metadata.name}].spec"
    rate = spec.requests_per_second
    tokens = max(1, math.ceil(rate * _MIN_FILL_INTERVAL - 1e-9))
    interval = tokens / rate
    notes.add(
        f"{where}.requestsPerSecond",
        "mapped",
        f"Envoy refills {tokens} token(s) every {duration(interval)} instead of continuously",
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
            "@type": LOCAL_RATELIMIT,
            "stat_prefix": "inbound_rate_limit",
            "token_bucket": {
                "max_tokens": spec.burst,
                "tokens_per_fill": tokens,
                "fill_interval": duration(interval),
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


# --- listener, routes, local app cluster ---------------------------------------------------


def inbound_listener(snapshot: Snapshot, node: SidecarNode, notes: Notes) -> Json:
    """Listener ``inbound``: mTLS, RBAC and the rate limit, then route configuration ``inbound``."""
    filters = _rbac_filters(snapshot, node, notes)
    authn = jwt_filter(snapshot, node, notes)
    if authn is not None:
        filters.insert(0, authn)  # before RBAC: authorization reads the verified token
    if snapshot.inbound.rate_limit is not None:
        filters.append(_rate_limit_filter(snapshot.inbound.rate_limit, notes))
    common = common_tls(node, {"prefix": f"spiffe://{node.trust_domain}/"})
    common["alpn_protocols"] = ["h2", "http/1.1"]
    manager = hcm("inbound", INBOUND_ROUTES, filters, xfcc="SANITIZE_SET")
    early = claim_header_removal(snapshot, node)
    if early:
        manager["typed_config"]["early_header_mutation_extensions"] = early
    if authn is not None:
        manager["typed_config"]["local_reply_config"] = audience_reply_mapper()
    tls_chain: Json = {
        "name": "mtls",
        "filters": [manager],
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": DOWNSTREAM_TLS,
                "require_client_certificate": True,
                "common_tls_context": common,
            },
        },
    }
    listener: Json = {
        "name": INBOUND_LISTENER,
        "address": address(node.inbound_address, node.inbound_port),
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
                "typed_config": {"@type": TLS_INSPECTOR},
            }
        ]
        listener["filter_chains"].append(
            {
                "name": "plaintext",
                "filter_chain_match": {"transport_protocol": "raw_buffer"},
                # SANITIZE: a plaintext caller must not pass off an XFCC of its own.
                "filters": [_plaintext_manager(filters, early)],
            }
        )
    return listener


def _plaintext_manager(filters: list[Json], early: list[Json]) -> Json:
    manager = hcm("inbound_plaintext", INBOUND_ROUTES, copy.deepcopy(filters), xfcc="SANITIZE")
    if early:
        manager["typed_config"]["early_header_mutation_extensions"] = copy.deepcopy(early)
    if any(f["name"] == JWT_FILTER for f in filters):
        manager["typed_config"]["local_reply_config"] = audience_reply_mapper()
    return manager


def inbound_routes() -> Json:
    """Route configuration ``inbound``: every request to the local app, with no timeout."""
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


def local_app_cluster(node: SidecarNode) -> Json:
    """Cluster ``inbound|app``: the application on ``127.0.0.1:app_port``, plaintext."""
    return {
        "name": LOCAL_APP_CLUSTER,
        "type": "STATIC",
        "connect_timeout": CONNECT_TIMEOUT,
        "typed_extension_protocol_options": protocol_options(),
        "load_assignment": {
            "cluster_name": LOCAL_APP_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": address("127.0.0.1", node.app_port)}}]}
            ],
        },
    }
