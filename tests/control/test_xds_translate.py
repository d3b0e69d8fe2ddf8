"""The PURE Snapshot → Envoy translator: mapping of each policy field, and what it reports."""

from __future__ import annotations

import fnmatch
import importlib
import json
import re
from typing import Any

import pytest

from meshlib.errors import ConfigError
from meshlib.policy.authz import peer_namespace
from meshlib.policy.decode import decode_documents
from meshlib.resilience.retry import IDEMPOTENT_METHODS as LIBRARY_IDEMPOTENT
from meshlib_control.snapshot.builder import MeshState, build_snapshot
from meshlib_control.xds.static import StaticSecrets, render_static_bootstrap
from meshlib_control.xds.translate import (
    IDEMPOTENT_METHODS,
    LOCAL_APP_CLUSTER,
    EnvoyResources,
    SidecarNode,
    glob_to_re2,
    translate,
)
from tests.records import TD, instance_record

POLICIES = """
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {name: orders, namespace: default}
spec:
  service: orders
  loadBalancer: P2C_EWMA
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  routes:
  - name: split
    match: {path: {prefix: /api/}, methods: [GET, HEAD], headers: [{name: x-user, present: true}]}
    backends: [{subset: v1, weight: 90}, {subset: v2, weight: 10}, {subset: v2, weight: 0}]
    timeout: 2s
    retries:
      attempts: 3
      perTryTimeout: 500ms
      retryOn: [connect-failure, 5xx, retriable-status-codes]
      retriableStatusCodes: [409]
      backoff: {baseInterval: 10ms, maxInterval: 100ms}
    fault:
      delay: {percent: 12.5, fixedDelay: 100ms}
      abort: {percent: 1, httpStatus: 500, grpcStatus: 14}
      headers: [{name: x-chaos, exact: "on"}]
    mirror: {subset: v2, percent: 5}
  - name: writes
    match: {path: {regex: "/orders/[0-9]+"}, methods: [POST]}
    backends: [{subset: v2}]
    retries: {attempts: 1, allowNonIdempotent: true, maxReplayBytes: 1024}
  - name: quiet
    match: {path: {exact: /health}}
    retries: {attempts: 0}
  retryBudget: {percent: 25, minRetriesPerSecond: 2.5, ttl: 10s}
  outlierDetection: {consecutive5xx: 3, consecutiveGatewayErrors: 4, interval: 5s}
  connectionPool: {maxConnections: 50, maxPending: 0}
---
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {name: billing, namespace: payments}
spec:
  service: billing
  loadBalancer: ROUND_ROBIN
  circuitBreaker: {consecutiveFailures: 2, resetTimeout: 500ms}
---
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: default}
spec:
  service: inventory
  rules:
  - name: reads
    from: {principals: ["spiffe://mesh.local/ns/default/sa/orders"]}
    to: {methods: [GET, HEAD], paths: ["/items/*"]}
  - name: ops
    from: {namespaces: ["ops-*"]}
  - name: open
---
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: default}
spec:
  action: DENY
  rules:
  - from: {namespaces: [web]}
    to: {paths: ["/admin*"]}
---
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {name: other-service, namespace: default}
spec: {service: orders, action: DENY, rules: [{name: all}]}
---
apiVersion: meshlib.io/v1
kind: PeerAuthentication
metadata: {name: legacy, namespace: default}
spec: {service: inventory, mode: PERMISSIVE}
---
apiVersion: meshlib.io/v1
kind: RateLimit
metadata: {name: limit, namespace: default}
spec: {service: inventory, requestsPerSecond: 5, burst: 10, perCaller: true}
"""


def instance(iid: str, service: str, address: str, *, ns: str = "default", **labels: str):
    return instance_record(iid, service, address=address, ns=ns, labels=labels)


INSTANCES = (
    instance("o1", "orders", "10.0.0.1", version="v1", zone="a"),
    instance("o2", "orders", "10.0.0.2", version="v1", zone="b"),
    instance("o3", "orders", "10.0.0.3", version="v2", zone="a"),
    instance("o4", "orders", "orders-4.example", version="v2"),
    instance("i1", "inventory", "10.0.1.1"),
    instance("b1", "billing", "10.0.2.1", ns="payments"),
)
NODE = SidecarNode(
    service="inventory",
    namespace="default",
    trust_domain=TD,
    inbound_port=15001,
    app_port=8080,
    outbound_port=15000,
    zone="a",
)


def resources(policies: str = POLICIES, node: SidecarNode = NODE) -> EnvoyResources:
    state = MeshState(TD, decode_documents(policies) if policies else (), INSTANCES)
    return translate(build_snapshot(state, service="inventory", namespace="default"), node=node)


RES = resources()


def http_filters(res: EnvoyResources, chain: int = 0) -> list[dict[str, Any]]:
    hcm = res.listeners[0]["filter_chains"][chain]["filters"][0]["typed_config"]
    return hcm["http_filters"]


def vhost(res: EnvoyResources, name: str) -> dict[str, Any]:
    (host,) = [h for h in res.routes[1]["virtual_hosts"] if h["name"] == name]
    return host


def route(res: EnvoyResources, service: str, name: str) -> dict[str, Any]:
    (found,) = [r for r in vhost(res, service)["routes"] if r["name"] == name]
    return found


def cluster(res: EnvoyResources, name: str) -> dict[str, Any]:
    (found,) = [c for c in res.clusters if c["name"] == name]
    return found


def notes(res: EnvoyResources) -> dict[str, str]:
    return {u.path: u.kind for u in res.unsupported}


# --- inbound -------------------------------------------------------------------------------


def test_deny_filter_comes_before_allow_filter_then_rate_limit_and_router():
    """Filter order is the library's: DENY rules, ALLOW rules, rate limit, app."""
    names = [f["name"] for f in http_filters(RES)]
    assert names == [
        "envoy.filters.http.rbac.deny",
        "envoy.filters.http.rbac.allow",
        "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.router",
    ]
    deny = http_filters(RES)[0]["typed_config"]["rules"]
    assert deny["action"] == "DENY"
    assert list(deny["policies"]) == ["default/deny rules[0]"]  # other-service not selected


def test_rbac_rule_maps_principals_methods_and_paths():
    """principals → principal_name regex, methods → :method, paths → url_path regex."""
    allow = http_filters(RES)[1]["typed_config"]["rules"]
    assert list(allow["policies"]) == [
        "default/allow reads",
        "default/allow ops",
        "default/allow open",
    ]
    reads = allow["policies"]["default/allow reads"]
    assert reads["principals"] == [
        {
            "authenticated": {
                "principal_name": {
                    "safe_regex": {"regex": re.escape("spiffe://mesh.local/ns/default/sa/orders")}
                }
            }
        }
    ]
    (perm,) = reads["permissions"]
    method, path = perm["and_rules"]["rules"]
    assert method == {
        "header": {"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}
    }
    assert path == {"url_path": {"path": {"safe_regex": {"regex": "/items/.*"}}}}
    assert allow["policies"]["default/allow open"] == {
        "permissions": [{"any": True}],
        "principals": [{"any": True}],
    }


def test_namespace_glob_matches_the_same_spiffe_ids_as_the_library():
    """The namespace regex on the SPIFFE ID agrees with peer_namespace + fnmatch."""
    allow = http_filters(RES)[1]["typed_config"]["rules"]
    (principal,) = allow["policies"]["default/allow ops"]["principals"]
    regex = principal["authenticated"]["principal_name"]["safe_regex"]["regex"]
    for peer in [
        "spiffe://mesh.local/ns/ops-a/sa/x",
        "spiffe://mesh.local/ns/ops-/sa/x",
        "spiffe://mesh.local/ns/ops/sa/x",
        "spiffe://mesh.local/ns/ops-a/b/sa/x",
        "spiffe://mesh.local/ns/web/sa/ops-a",
        "spiffe://mesh.local/ns/ops-a/sa/x/y",
    ]:
        ns = peer_namespace(peer)
        library = ns is not None and fnmatch.fnmatchcase(ns, "ops-*")
        assert (re.fullmatch(regex, peer) is not None) == library, peer


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        ("/items/*", "/items/a/b"),
        ("/items/*", "/itemsx"),
        ("/a?c", "/abc"),
        ("/a?c", "/a/c"),
        ("/stock/[a-f]?", "/stock/b1"),
        ("/stock/[!a-f]", "/stock/z"),
        ("/stock/[!a-f]", "/stock/a"),
        ("/x[", "/x["),
        ("/a.b+c", "/a.b+c"),
        ("/a.b+c", "/aXbbc"),
        ("*", "/anything"),
        ("/[]]", "/]"),
    ],
)
def test_glob_to_re2_matches_what_fnmatch_matches(pattern, text):
    """Globs become regexes with fnmatch's meaning (checked on Python's re, an RE2 superset)."""
    assert (re.fullmatch(glob_to_re2(pattern), text) is not None) == fnmatch.fnmatchcase(
        text, pattern
    )


def test_no_authorization_policy_means_no_rbac_filter():
    """No policy: no RBAC at all; an ALLOW policy without rules denies everything."""
    assert [f["name"] for f in http_filters(resources(""))] == ["envoy.filters.http.router"]
    nobody = resources(
        "apiVersion: meshlib.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: nobody}\nspec: {rules: []}\n"
    )
    (rbac, _) = http_filters(nobody)
    assert rbac["typed_config"]["rules"] == {"action": "ALLOW", "policies": {}}


def test_inbound_tls_requires_trust_domain_client_certs_and_sets_xfcc():
    """mTLS with the node's SVID, SAN prefix on the trust domain, XFCC SANITIZE_SET + URI."""
    chain = RES.listeners[0]["filter_chains"][0]
    tls = chain["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    common = tls["common_tls_context"]
    assert common["tls_certificate_sds_secret_configs"][0]["name"] == (
        "spiffe://mesh.local/ns/default/sa/inventory"
    )
    validation = common["combined_validation_context"]
    assert validation["validation_context_sds_secret_config"]["name"] == "spiffe://mesh.local"
    assert validation["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"prefix": "spiffe://mesh.local/"}}
    ]
    hcm = chain["filters"][0]["typed_config"]
    assert hcm["forward_client_cert_details"] == "SANITIZE_SET"
    assert hcm["set_current_client_cert_details"] == {"uri": True}
    assert RES.secret_names == (
        "spiffe://mesh.local/ns/default/sa/inventory",
        "spiffe://mesh.local",
    )
    assert RES.routes[0]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] == LOCAL_APP_CLUSTER
    app = RES.clusters[0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert app["endpoint"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 8080,
    }


def test_permissive_adds_a_plaintext_chain_and_strict_does_not():
    """PERMISSIVE: tls_inspector + a raw_buffer chain that sanitizes XFCC; reported."""
    listener = RES.listeners[0]
    assert [c["name"] for c in listener["filter_chains"]] == ["mtls", "plaintext"]
    assert listener["filter_chains"][0]["filter_chain_match"] == {"transport_protocol": "tls"}
    plain = listener["filter_chains"][1]
    assert plain["filter_chain_match"] == {"transport_protocol": "raw_buffer"}
    assert "transport_socket" not in plain
    assert plain["filters"][0]["typed_config"]["forward_client_cert_details"] == "SANITIZE"
    assert listener["listener_filters"][0]["name"] == "envoy.filters.listener.tls_inspector"
    assert notes(RES)["inbound.peerMode"] == "mapped"
    strict = resources("").listeners[0]
    assert len(strict["filter_chains"]) == 1
    assert "listener_filters" not in strict
    assert "inbound.peerMode" not in notes(resources(""))


def test_rate_limit_token_bucket_and_per_caller_reported():
    """5/s, burst 10 → 1 token every 200 ms, 10 max; perCaller is reported as ignored."""
    config = http_filters(RES)[2]["typed_config"]
    assert config["token_bucket"] == {
        "max_tokens": 10,
        "tokens_per_fill": 1,
        "fill_interval": "0.2s",
    }
    assert notes(RES)["inbound.rateLimit[default/limit].spec.perCaller"] == "ignored"


# --- outbound ------------------------------------------------------------------------------


def test_virtual_host_domains_are_unique_and_bare_names_only_in_our_namespace():
    """Domains as PolicyEngine.resolve accepts them; Envoy refuses duplicates."""
    assert vhost(RES, "orders.default")["domains"][:4] == [
        "orders",
        "orders.default",
        "orders.default.svc",
        "orders.default.svc.mesh.local",
    ]
    assert "billing" not in vhost(RES, "billing.payments")["domains"]
    every = [d for h in RES.routes[1]["virtual_hosts"] for d in h["domains"]]
    assert len(every) == len(set(every))
    assert RES.routes[1]["ignore_port_in_host_matching"] is True


def test_route_match_and_weighted_clusters():
    """Path, methods, headers; subsets → weighted clusters, zero weights left out."""
    split = route(RES, "orders.default", "split")
    assert split["match"] == {
        "prefix": "/api/",
        "headers": [
            {"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}},
            {"name": "x-user", "present_match": True},
        ],
    }
    assert split["route"]["weighted_clusters"] == {
        "clusters": [
            {"name": "outbound|orders.default|v1", "weight": 90},
            {"name": "outbound|orders.default|v2", "weight": 10},
        ]
    }
    assert split["route"]["timeout"] == "2s"
    writes = route(RES, "orders.default", "writes")
    assert writes["match"]["safe_regex"] == {"regex": "/orders/[0-9]+"}
    assert writes["route"]["cluster"] == "outbound|orders.default|v2"
    default = vhost(RES, "orders.default")["routes"][-1]
    assert default["name"] == "default"
    assert default["match"] == {"prefix": "/"}
    assert default["route"]["cluster"] == "outbound|orders.default"
    assert default["route"]["timeout"] == "15s"


def test_retry_policy_mapping():
    """retryOn, attempts, perTryTimeout, backoff; non-idempotent methods gated by headers."""
    retry = route(RES, "orders.default", "split")["route"]["retry_policy"]
    assert retry["retry_on"] == "connect-failure,5xx,retriable-status-codes"
    assert retry["num_retries"] == 3
    assert retry["retriable_status_codes"] == [409]
    assert retry["per_try_timeout"] == "0.5s"
    assert retry["retry_back_off"] == {"base_interval": "0.01s", "max_interval": "0.1s"}
    methods, key = retry["retriable_request_headers"]
    allowed = methods["string_match"]["safe_regex"]["regex"]
    for method in ("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE", "POST", "PATCH", "get"):
        assert (re.fullmatch(allowed, method) is not None) == (method in LIBRARY_IDEMPOTENT)
    assert key == {"name": "idempotency-key", "string_match": {"safe_regex": {"regex": ".+"}}}
    writes = route(RES, "orders.default", "writes")
    assert "retriable_request_headers" not in writes["route"]["retry_policy"]
    assert writes["request_body_buffer_limit"] == 1024
    assert "retry_policy" not in route(RES, "orders.default", "quiet")["route"]
    default = vhost(RES, "billing.payments")["routes"][-1]["route"]["retry_policy"]
    assert default["retry_on"] == "connect-failure,reset,gateway-error"
    assert default["num_retries"] == 2


def test_idempotent_methods_match_the_library():
    """The translator's copy of the idempotent methods is the library's set."""
    assert set(IDEMPOTENT_METHODS) == set(LIBRARY_IDEMPOTENT)


def test_fault_per_route_with_a_grpc_twin_and_mirror():
    """Fault → typed_per_filter_config; a gRPC twin route aborts with grpcStatus."""
    routes = [r["name"] for r in vhost(RES, "orders.default")["routes"]]
    assert routes == ["split/grpc", "split", "writes", "quiet", "default"]
    fault = route(RES, "orders.default", "split")["typed_per_filter_config"][
        "envoy.filters.http.fault"
    ]
    assert fault["delay"] == {
        "fixed_delay": "0.1s",
        "percentage": {"numerator": 125000, "denominator": "MILLION"},
    }
    assert fault["abort"] == {
        "http_status": 500,
        "percentage": {"numerator": 10000, "denominator": "MILLION"},
    }
    assert fault["headers"] == [{"name": "x-chaos", "string_match": {"exact": "on"}}]
    twin = route(RES, "orders.default", "split/grpc")
    assert twin["match"]["headers"][-1] == {
        "name": "content-type",
        "string_match": {"prefix": "application/grpc"},
    }
    grpc_fault = twin["typed_per_filter_config"]["envoy.filters.http.fault"]
    assert grpc_fault["abort"]["grpc_status"] == 14
    (mirror,) = route(RES, "orders.default", "split")["route"]["request_mirror_policies"]
    assert mirror["cluster"] == "outbound|orders.default|v2"
    assert mirror["runtime_fraction"]["default_value"]["numerator"] == 50000
    outbound = RES.listeners[1]
    assert outbound["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 15000}


# --- clusters and endpoints ----------------------------------------------------------------


def test_clusters_tls_lb_outlier_and_breakers():
    """Exact SAN of the service, lb mapping, outlier detection and circuit_breakers."""
    orders = cluster(RES, "outbound|orders.default|v1")
    assert orders["type"] == "EDS"
    assert orders["lb_policy"] == "LEAST_REQUEST"
    tls = orders["transport_socket"]["typed_config"]["common_tls_context"]
    assert tls["combined_validation_context"]["default_validation_context"][
        "match_typed_subject_alt_names"
    ] == [{"san_type": "URI", "matcher": {"exact": "spiffe://mesh.local/ns/default/sa/orders"}}]
    assert orders["outlier_detection"]["consecutive_5xx"] == 3
    assert orders["outlier_detection"]["consecutive_gateway_failure"] == 4
    assert orders["outlier_detection"]["enforcing_consecutive_gateway_failure"] == 100
    assert orders["outlier_detection"]["enforcing_success_rate"] == 0
    (threshold,) = orders["circuit_breakers"]["thresholds"]
    assert threshold["max_connections"] == 50
    assert threshold["max_pending_requests"] == 0
    assert threshold["retry_budget"] == {
        "budget_percent": {"value": 25.0},
        "min_retry_concurrency": 3,
    }
    billing = cluster(RES, "outbound|billing.payments")
    assert billing["lb_policy"] == "ROUND_ROBIN"
    assert billing["outlier_detection"]["consecutive_5xx"] == 2
    assert billing["outlier_detection"]["base_ejection_time"] == "0.5s"
    assert billing["outlier_detection"]["max_ejection_percent"] == 100
    assert "outlier_detection" not in cluster(RES, "outbound|inventory.default")


def test_subset_assignments_filter_by_labels_and_prefer_the_zone():
    """One CLA per cluster; same-zone endpoints at priority 0; non-IP endpoints reported."""
    cla = {c["cluster_name"]: c for c in RES.endpoints}
    assert set(cla) == {c["name"] for c in RES.clusters[1:]}

    def addresses(name: str) -> list[tuple[int, str]]:
        return [
            (group.get("priority", 0), lb["endpoint"]["address"]["socket_address"]["address"])
            for group in cla[name]["endpoints"]
            for lb in group["lb_endpoints"]
        ]

    assert addresses("outbound|orders.default") == [
        (0, "10.0.0.1"),
        (0, "10.0.0.3"),
        (1, "10.0.0.2"),
    ]
    assert addresses("outbound|orders.default|v2") == [(0, "10.0.0.3")]
    assert cla["outbound|orders.default"]["policy"]["overprovisioning_factor"] > 1000
    assert "policy" not in cla["outbound|billing.payments"]
    assert notes(RES)["services[orders.default].spec.endpoints[o4]"] == "ignored"


# --- reporting and properties --------------------------------------------------------------


def test_unsupported_lists_what_envoy_cannot_honour():
    """Every approximation is reported with a path, a kind and a reason."""
    found = notes(RES)
    assert found["services[orders.default].spec.loadBalancer"] == "mapped"
    assert found["services[orders.default].spec.retryBudget"] == "mapped"
    assert found["services[billing.payments].spec.circuitBreaker"] == "mapped"
    assert found["inbound.authorization[default/allow].spec.rules[0].to.paths"] == "partial"
    assert found["services[orders.default].spec.routes[0].retries.maxReplayBytes"] == "partial"
    assert all(u.reason for u in RES.unsupported)
    assert "services[billing.payments].spec.loadBalancer" not in found


def test_python_only_regex_is_reported():
    """A lookahead RE2 cannot compile is reported, not silently passed on."""
    res = resources(
        "apiVersion: meshlib.io/v1\nkind: TrafficPolicy\nmetadata: {name: orders}\n"
        "spec: {service: orders, routes: [{match: {path: {regex: '/(?!admin).*'}}}]}\n"
    )
    assert notes(res)["services[orders.default].spec.routes[0].match.path.regex"] == "ignored"


def test_translation_is_deterministic():
    """Same state → equal resources, whatever order instances were registered in."""
    again = translate(
        build_snapshot(
            MeshState(TD, decode_documents(POLICIES), tuple(reversed(INSTANCES))),
            service="inventory",
            namespace="default",
        ),
        node=NODE,
    )
    assert again == RES
    assert json.dumps(again.clusters) == json.dumps(RES.clusters)
    assert again.unsupported == RES.unsupported


def test_node_must_be_the_snapshot_workload():
    """A snapshot translated for another workload's sidecar is refused."""
    snapshot = build_snapshot(MeshState(TD, (), INSTANCES), service="orders", namespace="default")
    with pytest.raises(ConfigError, match="snapshot is for orders"):
        translate(snapshot, node=NODE)


def test_every_resource_parses_as_its_envoy_proto():
    """Field names are Envoy's: json_format.ParseDict accepts every resource."""
    from google.protobuf import json_format

    def vendored(name: str) -> Any:  # the Envoy API modules meshlib_control ships
        return importlib.import_module(f"meshlib_control.xds.protos.{name}")

    cluster_pb2 = vendored("envoy.config.cluster.v3.cluster_pb2")
    endpoint_pb2 = vendored("envoy.config.endpoint.v3.endpoint_pb2")
    listener_pb2 = vendored("envoy.config.listener.v3.listener_pb2")
    route_pb2 = vendored("envoy.config.route.v3.route_pb2")
    # Register the typed_config types the resources name.
    for module in (
        "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
        "envoy.extensions.filters.http.router.v3.router_pb2",
        "envoy.extensions.filters.http.rbac.v3.rbac_pb2",
        "envoy.extensions.filters.http.fault.v3.fault_pb2",
        "envoy.extensions.filters.http.local_ratelimit.v3.local_rate_limit_pb2",
        "envoy.extensions.filters.listener.tls_inspector.v3.tls_inspector_pb2",
        "envoy.extensions.transport_sockets.tls.v3.tls_pb2",
        "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2",
    ):
        vendored(module)
    for items, message in (
        (RES.listeners, listener_pb2.Listener),
        (RES.routes, route_pb2.RouteConfiguration),
        (RES.clusters, cluster_pb2.Cluster),
        (RES.endpoints, endpoint_pb2.ClusterLoadAssignment),
    ):
        for item in items:
            json_format.ParseDict(item, message())


def test_static_bootstrap_inlines_rds_eds_and_sds():
    """RDS → route_config, EDS → STATIC + load_assignment, SDS → static secrets."""
    boot = render_static_bootstrap(RES, StaticSecrets("CHAIN", "KEY", "BUNDLE"))
    text = json.dumps(boot)
    assert '"rds"' not in text
    assert '"sds_config"' not in text
    assert '"EDS"' not in text
    static = boot["static_resources"]
    hcm = static["listeners"][1]["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["route_config"]["name"] == "outbound"
    orders = next(c for c in static["clusters"] if c["name"] == "outbound|orders.default")
    assert orders["type"] == "STATIC"
    assert orders["load_assignment"]["cluster_name"] == "outbound|orders.default"
    assert [s["name"] for s in static["secrets"]] == list(RES.secret_names)
    assert "rds" in RES.listeners[1]["filter_chains"][0]["filters"][0]["typed_config"]
