from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from meshlib.errors import PolicyError
from meshlib.policy import model as m
from meshlib.policy.decode import (
    decode_documents,
    decode_resource,
    encode_resource,
    load_documents,
)

TRAFFIC: dict[str, Any] = {
    "apiVersion": "meshlib.io/v1",
    "kind": "TrafficPolicy",
    "metadata": {"name": "orders", "namespace": "shop"},
    "spec": {
        "service": "orders",
        "loadBalancer": "P2C_EWMA",
        "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2", "track": "canary"}},
        ],
        "routes": [
            {
                "name": "canary",
                "match": {
                    "path": {"prefix": "/api"},
                    "methods": ["GET", "HEAD"],
                    "headers": [{"name": "X-Canary", "exact": "1"}],
                },
                "backends": [{"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 10}],
                "timeout": "2s",
                "retries": {
                    "attempts": 3,
                    "perTryTimeout": "500ms",
                    "retryOn": ["5xx", "retriable-status-codes"],
                    "retriableStatusCodes": [409],
                    "backoff": {"baseInterval": "10ms", "maxInterval": "1s"},
                    "allowNonIdempotent": True,
                    "maxReplayBytes": 1024,
                },
                "fault": {
                    "delay": {"percent": 10, "fixedDelay": "100ms"},
                    "abort": {"percent": 5.5, "httpStatus": 500, "grpcStatus": 14},
                    "headers": [{"name": "x-chaos", "present": True}],
                },
                "mirror": {"subset": "v2", "percent": 10},
            },
            {"match": {"path": {"regex": "/items/[0-9]+"}}},
        ],
        "retryBudget": {"percent": 30, "minRetriesPerSecond": 5, "ttl": "20s"},
        "outlierDetection": {
            "consecutive5xx": 3,
            "consecutiveGatewayErrors": 2,
            "interval": "5s",
            "baseEjectionTime": "1m",
            "maxEjectionPercent": 30,
        },
        "circuitBreaker": {"consecutiveFailures": 4, "resetTimeout": "15s"},
        "connectionPool": {"maxConnections": 10, "maxPending": 0},
    },
}

AUTHZ: dict[str, Any] = {
    "apiVersion": "meshlib.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "inventory-allow"},
    "spec": {
        "service": "inventory",
        "action": "ALLOW",
        "rules": [
            {
                "name": "orders-reads",
                "from": {
                    "principals": ["spiffe://mesh.local/ns/default/sa/orders"],
                    "namespaces": ["default"],
                },
                "to": {"methods": ["GET"], "paths": ["/items/*"]},
            },
            {"to": {"paths": ["/health"]}},
        ],
    },
}

PEER: dict[str, Any] = {
    "apiVersion": "meshlib.io/v1",
    "kind": "PeerAuthentication",
    "metadata": {"name": "strict", "namespace": "shop"},
    "spec": {"mode": "STRICT"},
}

RATE: dict[str, Any] = {
    "apiVersion": "meshlib.io/v1",
    "kind": "RateLimit",
    "metadata": {"name": "orders-rl"},
    "spec": {"service": "orders", "requestsPerSecond": 2.5, "perCaller": True},
}

REQAUTH: dict[str, Any] = {
    "apiVersion": "meshlib.io/v1",
    "kind": "RequestAuthentication",
    "metadata": {"name": "orders-jwt"},
    "spec": {
        "service": "orders",
        "jwtRules": [{"issuer": "https://issuer.test", "jwksUri": "https://issuer.test/jwks"}],
    },
}

_DELETE = object()
_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _mutated(base: dict[str, Any], *changes: tuple[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    for path, value in changes:
        steps: list[str | int] = [
            name if name else int(index) for name, index in _STEP.findall(path)
        ]
        node: Any = doc
        for step in steps[:-1]:
            node = node[step]
        if value is _DELETE:
            del node[steps[-1]]
        elif isinstance(node, list) and steps[-1] == len(node):
            node.append(value)
        else:
            node[steps[-1]] = value
    return doc


R0 = "spec.routes[0]"

BAD_TRAFFIC = [
    (("apiVersion", "v1"), "apiVersion", "must be 'meshlib.io/v1'"),
    (("apiVersion", _DELETE), "apiVersion", "required"),
    (("kind", "Gateway"), "kind", "must be one of"),
    (("metadata.name", "Orders"), "metadata.name", "DNS label"),
    (("metadata.name", _DELETE), "metadata.name", "required"),
    (("metadata.namespace", "a_b"), "metadata.namespace", "DNS label"),
    (("metadata.labels", {}), "metadata.labels", "unknown field"),
    (("extra", {}), "extra", "unknown field"),
    (("spec", "x"), "spec", "must be a mapping"),
    (("spec.servce", "orders"), "spec.servce", "unknown field"),
    (("spec.service", _DELETE), "spec.service", "required"),
    (("spec.service", "a" * 64), "spec.service", "DNS label"),
    (("spec.loadBalancer", "FASTEST"), "spec.loadBalancer", "must be one of"),
    (("spec.subsets[1].name", "v1"), "spec.subsets[1].name", "duplicate subset name"),
    (("spec.subsets[0].labels", {}), "spec.subsets[0].labels", "must not be empty"),
    (("spec.subsets[0].labels.version", 1), "spec.subsets[0].labels.version", "must be a string"),
    (("spec.subsets[0].labels", _DELETE), "spec.subsets[0].labels", "required"),
    (("spec.routes", "x"), "spec.routes", "must be a list"),
    ((f"{R0}.match.path", {"exact": "/a", "prefix": "/b"}), f"{R0}.match.path", "exactly one"),
    ((f"{R0}.match.path", {}), f"{R0}.match.path", "exactly one"),
    ((f"{R0}.match.path", {"regex": "("}), f"{R0}.match.path.regex", "invalid regex"),
    ((f"{R0}.match.path", {"prefix": "api"}), f"{R0}.match.path.prefix", "must start with '/'"),
    ((f"{R0}.match.methods[1]", "get"), f"{R0}.match.methods[1]", "upper-case"),
    ((f"{R0}.match.methods", []), f"{R0}.match.methods", "must not be empty"),
    ((f"{R0}.match.host", "x"), f"{R0}.match.host", "unknown field"),
    ((f"{R0}.match.headers[0].present", True), f"{R0}.match.headers[0]", "exactly one"),
    (
        (f"{R0}.match.headers[0]", {"name": "x-a", "present": False}),
        f"{R0}.match.headers[0].present",
        "must be true",
    ),
    ((f"{R0}.match.headers[0].name", "bad header"), f"{R0}.match.headers[0].name", "invalid"),
    (
        (f"{R0}.match.headers[0]", {"name": "x-a", "regex": "["}),
        f"{R0}.match.headers[0].regex",
        "invalid regex",
    ),
    ((f"{R0}.match.headers[0].exact", 1), f"{R0}.match.headers[0].exact", "must be a string"),
    ((f"{R0}.backends[0].subset", "v3"), f"{R0}.backends[0].subset", "unknown subset 'v3'"),
    ((f"{R0}.backends[1].weight", 1001), f"{R0}.backends[1].weight", "must be <= 1000"),
    ((f"{R0}.backends[1].weight", -1), f"{R0}.backends[1].weight", "must be >= 0"),
    ((f"{R0}.backends", [{"weight": 0}]), f"{R0}.backends", "total weight must be > 0"),
    ((f"{R0}.backends", []), f"{R0}.backends", "must not be empty"),
    ((f"{R0}.timeout", "0s"), f"{R0}.timeout", "must be > 0"),
    ((f"{R0}.timeout", 2), f"{R0}.timeout", "duration string"),
    ((f"{R0}.timeout", "2 seconds"), f"{R0}.timeout", "invalid duration"),
    ((f"{R0}.retries.attempts", 11), f"{R0}.retries.attempts", "must be <= 10"),
    ((f"{R0}.retries.attempts", True), f"{R0}.retries.attempts", "must be an integer"),
    ((f"{R0}.retries.perTryTimeout", "0ms"), f"{R0}.retries.perTryTimeout", "must be > 0"),
    ((f"{R0}.retries.retryOn[1]", "timeout"), f"{R0}.retries.retryOn[1]", "must be one of"),
    (
        (f"{R0}.retries.retryOn", ["5xx"]),
        f"{R0}.retries.retriableStatusCodes",
        "requires 'retriable-status-codes' in retryOn",
    ),
    (
        (f"{R0}.retries.retriableStatusCodes", _DELETE),
        f"{R0}.retries.retryOn",
        "retriableStatusCodes is empty",
    ),
    (
        (f"{R0}.retries.retriableStatusCodes", [409, 600]),
        f"{R0}.retries.retriableStatusCodes[1]",
        "must be <= 599",
    ),
    (
        (f"{R0}.retries.backoff.maxInterval", "5ms"),
        f"{R0}.retries.backoff.maxInterval",
        "must be >= baseInterval (10ms)",
    ),
    ((f"{R0}.retries.backoff.baseInterval", "0s"), f"{R0}.retries.backoff.baseInterval", "> 0"),
    ((f"{R0}.retries.allowNonIdempotent", "yes"), f"{R0}.retries.allowNonIdempotent", "true or"),
    (
        (f"{R0}.retries.maxReplayBytes", 16 * 1024 * 1024 + 1),
        f"{R0}.retries.maxReplayBytes",
        "must be <= 16777216",
    ),
    ((f"{R0}.fault", {}), f"{R0}.fault", "must set delay or abort"),
    ((f"{R0}.fault.delay.percent", 101), f"{R0}.fault.delay.percent", "must be <= 100"),
    ((f"{R0}.fault.delay.percent", "10%"), f"{R0}.fault.delay.percent", "must be a number"),
    ((f"{R0}.fault.delay.fixedDelay", _DELETE), f"{R0}.fault.delay.fixedDelay", "required"),
    ((f"{R0}.fault.abort.percent", _DELETE), f"{R0}.fault.abort.percent", "required"),
    ((f"{R0}.fault.abort.httpStatus", 199), f"{R0}.fault.abort.httpStatus", "must be >= 200"),
    ((f"{R0}.fault.abort.grpcStatus", 17), f"{R0}.fault.abort.grpcStatus", "must be <= 16"),
    ((f"{R0}.fault.abort.grpcStatus", 0), f"{R0}.fault.abort.grpcStatus", "must be >= 1"),
    ((f"{R0}.fault.headers[0].present", "y"), f"{R0}.fault.headers[0].present", "true or false"),
    ((f"{R0}.mirror.subset", "nope"), f"{R0}.mirror.subset", "unknown subset"),
    ((f"{R0}.mirror.percent", -1), f"{R0}.mirror.percent", "must be >= 0"),
    (("spec.routes[1].name", "canary"), "spec.routes[1].name", "duplicate route name 'canary'"),
    (("spec.routes[1].name", ""), "spec.routes[1].name", "must not be empty"),
    (("spec.retryBudget.percent", 120), "spec.retryBudget.percent", "must be <= 100"),
    (("spec.retryBudget.ttl", "0s"), "spec.retryBudget.ttl", "must be > 0"),
    (("spec.retryBudget.minRetriesPerSecond", -1), "spec.retryBudget.minRetriesPerSecond", ">= 0"),
    (("spec.outlierDetection.consecutive5xx", 0), "spec.outlierDetection.consecutive5xx", ">= 1"),
    (
        ("spec.outlierDetection.consecutiveGatewayErrors", 0),
        "spec.outlierDetection.consecutiveGatewayErrors",
        ">= 1",
    ),
    (
        ("spec.outlierDetection.maxEjectionPercent", 101),
        "spec.outlierDetection.maxEjectionPercent",
        "must be <= 100",
    ),
    (("spec.outlierDetection.interval", "0s"), "spec.outlierDetection.interval", "> 0"),
    (
        ("spec.outlierDetection.baseEjectionTime", "0s"),
        "spec.outlierDetection.baseEjectionTime",
        "> 0",
    ),
    (
        ("spec.circuitBreaker.consecutiveFailures", 0),
        "spec.circuitBreaker.consecutiveFailures",
        ">= 1",
    ),
    (("spec.circuitBreaker.resetTimeout", "-1s"), "spec.circuitBreaker.resetTimeout", "invalid"),
    (("spec.connectionPool.maxConnections", 0), "spec.connectionPool.maxConnections", ">= 1"),
    (("spec.connectionPool.maxPending", -1), "spec.connectionPool.maxPending", ">= 0"),
]

BAD_OTHERS = [
    (AUTHZ, ("spec.action", "AUDIT"), "spec.action", "must be one of ALLOW, DENY"),
    (AUTHZ, ("spec.service", "Inv"), "spec.service", "DNS label"),
    (
        AUTHZ,
        ("spec.rules[0].from.principals[1]", "orders"),
        "spec.rules[0].from.principals[1]",
        "must start with 'spiffe://'",
    ),
    (AUTHZ, ("spec.rules[0].from.principals", []), "spec.rules[0].from.principals", "not be empty"),
    (
        AUTHZ,
        ("spec.rules[0].from.namespaces[0]", "Default"),
        "spec.rules[0].from.namespaces[0]",
        "",
    ),
    (AUTHZ, ("spec.rules[0].from.ipBlocks", []), "spec.rules[0].from.ipBlocks", "unknown field"),
    (AUTHZ, ("spec.rules[0].to.methods[0]", "get"), "spec.rules[0].to.methods[0]", "upper-case"),
    (AUTHZ, ("spec.rules[0].to.paths[0]", "items"), "spec.rules[0].to.paths[0]", "start with '/'"),
    (AUTHZ, ("spec.rules[0].to.hosts", ["a"]), "spec.rules[0].to.hosts", "unknown field"),
    (AUTHZ, ("spec.rules[1].name", "orders-reads"), "spec.rules[1].name", "duplicate rule name"),
    (AUTHZ, ("spec.rules", {}), "spec.rules", "must be a list"),
    (PEER, ("spec.mode", _DELETE), "spec.mode", "required"),
    (PEER, ("spec.mode", "DISABLE"), "spec.mode", "must be one of STRICT, PERMISSIVE"),
    (PEER, ("spec.service", "A"), "spec.service", "DNS label"),
    (RATE, ("spec.service", _DELETE), "spec.service", "required"),
    (RATE, ("spec.requestsPerSecond", 0), "spec.requestsPerSecond", "must be >= 0.001"),
    (RATE, ("spec.requestsPerSecond", "10"), "spec.requestsPerSecond", "must be a number"),
    (RATE, ("spec.requestsPerSecond", _DELETE), "spec.requestsPerSecond", "required"),
    (RATE, ("spec.burst", 0), "spec.burst", ">= 1"),
    (RATE, ("spec.burst", 1.5), "spec.burst", "must be an integer"),
    (RATE, ("spec.perCaller", "no"), "spec.perCaller", "true or false"),
]


@pytest.mark.parametrize(("change", "path", "reason"), BAD_TRAFFIC, ids=lambda v: str(v)[:60])
def test_invalid_traffic_policy_names_the_field(
    change: tuple[str, Any], path: str, reason: str
) -> None:
    """Every TrafficPolicy validation rule refuses a bad value and names its exact path."""
    with pytest.raises(PolicyError) as info:
        decode_resource(_mutated(TRAFFIC, change))
    assert info.value.path == path
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("base", "change", "path", "reason"), BAD_OTHERS, ids=lambda v: str(v)[:60]
)
def test_invalid_other_kinds_name_the_field(
    base: dict[str, Any], change: tuple[str, Any], path: str, reason: str
) -> None:
    """AuthorizationPolicy, PeerAuthentication and RateLimit rules name the failing path."""
    with pytest.raises(PolicyError) as info:
        decode_resource(_mutated(base, change))
    assert info.value.path == path
    assert reason in info.value.reason


def test_non_mapping_document_is_refused() -> None:
    """A document that is not a mapping fails at the root."""
    with pytest.raises(PolicyError, match="must be a mapping"):
        decode_resource(["x"])  # type: ignore[arg-type]


def test_full_traffic_policy_decodes_to_the_model() -> None:
    """Every field of a full TrafficPolicy lands in the model, header names lower-cased."""
    res = decode_resource(TRAFFIC)
    assert res.key == ("TrafficPolicy", "shop", "orders")
    spec = res.spec
    assert isinstance(spec, m.TrafficPolicySpec)
    assert spec.subsets[1] == m.Subset("v2", (("track", "canary"), ("version", "v2")))
    route = spec.routes[0]
    assert route.match == m.RouteMatch(
        path=m.PathMatch("prefix", "/api"),
        methods=("GET", "HEAD"),
        headers=(m.HeaderMatch("x-canary", "exact", "1"),),
    )
    assert route.backends == (m.Backend("v1", 90), m.Backend("v2", 10))
    assert route.timeout == 2.0
    assert route.retries == m.RetryPolicy(
        attempts=3,
        per_try_timeout=0.5,
        retry_on=("5xx", "retriable-status-codes"),
        retriable_status_codes=(409,),
        backoff=m.Backoff(0.01, 1.0),
        allow_non_idempotent=True,
        max_replay_bytes=1024,
    )
    assert route.fault == m.FaultPolicy(
        delay=m.DelayFault(10.0, 0.1),
        abort=m.AbortFault(5.5, 500, 14),
        headers=(m.HeaderMatch("x-chaos", "present"),),
    )
    assert route.mirror == m.MirrorPolicy("v2", 10.0)
    assert spec.routes[1].name == "routes[1]"
    assert spec.routes[1].match.path == m.PathMatch("regex", "/items/[0-9]+")
    assert spec.retry_budget == m.RetryBudget(30.0, 5.0, 20.0)
    assert spec.outlier_detection == m.OutlierDetection(3, 2, 5.0, 60.0, 30)
    assert spec.circuit_breaker == m.CircuitBreakerPolicy(4, 15.0)
    assert spec.connection_pool == m.ConnectionPool(10, 0)


def test_minimal_traffic_policy_gets_every_default() -> None:
    """Omitted fields take the documented defaults; optional features stay off."""
    res = decode_resource(
        {
            "apiVersion": "meshlib.io/v1",
            "kind": "TrafficPolicy",
            "metadata": {"name": "p"},
            "spec": {"service": "orders", "routes": [{}]},
        }
    )
    assert res.metadata == m.Metadata("p", "default")
    spec = res.spec
    assert isinstance(spec, m.TrafficPolicySpec)
    assert spec.load_balancer == "LEAST_REQUEST"
    assert spec.subsets == ()
    assert spec.retry_budget == m.RetryBudget(20.0, 10.0, 10.0)
    assert spec.outlier_detection is None
    assert spec.circuit_breaker is None
    assert spec.connection_pool == m.ConnectionPool(100, 100)
    route = spec.routes[0]
    assert route == m.Route(name="routes[0]")
    assert route.backends == (m.Backend(None, 100),)
    assert route.timeout is None and route.fault is None and route.mirror is None
    assert route.retries.attempts == 2
    assert route.retries.retry_on == ("connect-failure", "reset", "gateway-error")
    assert route.retries.backoff == m.Backoff(0.025, 0.25)
    assert route.retries.allow_non_idempotent is False
    assert route.retries.max_replay_bytes == 65536


def test_empty_optional_sections_take_their_defaults() -> None:
    """Empty outlierDetection/circuitBreaker/fault.abort mappings turn features on with defaults."""
    doc = _mutated(
        TRAFFIC,
        ("spec.outlierDetection", {}),
        ("spec.circuitBreaker", {}),
        (f"{R0}.fault", {"abort": {"percent": 1}}),
        (f"{R0}.mirror", {}),
        (f"{R0}.retries", {"backoff": {"baseInterval": "1s"}}),
    )
    spec = decode_resource(doc).spec
    assert isinstance(spec, m.TrafficPolicySpec)
    assert spec.outlier_detection == m.OutlierDetection()
    assert spec.circuit_breaker == m.CircuitBreakerPolicy(5, 30.0)
    assert spec.routes[0].fault == m.FaultPolicy(abort=m.AbortFault(1.0, 503, None))
    assert spec.routes[0].mirror == m.MirrorPolicy(None, 100.0)
    # maxInterval defaults to 250ms but never below an explicit baseInterval
    assert spec.routes[0].retries.backoff == m.Backoff(1.0, 1.0)


def test_other_kinds_defaults() -> None:
    """Authz defaults to ALLOW with no rules; RateLimit burst defaults to ceil(rps)."""
    authz = decode_resource(
        {
            "apiVersion": "meshlib.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "a"},
            "spec": {},
        }
    )
    assert authz.spec == m.AuthorizationPolicySpec(service=None, action="ALLOW", rules=())
    rate = decode_resource(RATE)
    assert rate.spec == m.RateLimitSpec("orders", 2.5, 3, True)
    peer = decode_resource(PEER)
    assert peer.spec == m.PeerAuthenticationSpec(mode="STRICT", service=None)
    rule = decode_resource(AUTHZ).spec
    assert isinstance(rule, m.AuthorizationPolicySpec)
    assert rule.rules[1] == m.AuthzRule(name="rules[1]", paths=("/health",))


@pytest.mark.parametrize("doc", [TRAFFIC, AUTHZ, PEER, RATE], ids=lambda d: d["kind"])
def test_encode_decode_round_trip(doc: dict[str, Any]) -> None:
    """decode(encode(r)) == r, and the encoded form is JSON-able and stable."""
    res = decode_resource(doc)
    encoded = encode_resource(res)
    assert decode_resource(json.loads(json.dumps(encoded))) == res
    assert encode_resource(decode_resource(encoded)) == encoded


def test_encode_fills_in_defaults_and_formats_durations() -> None:
    """The canonical form spells out defaults, with durations as strings."""
    res = decode_resource(
        {
            "apiVersion": "meshlib.io/v1",
            "kind": "TrafficPolicy",
            "metadata": {"name": "p"},
            "spec": {"service": "orders", "routes": [{"timeout": "1.5s"}]},
        }
    )
    spec = encode_resource(res)["spec"]
    assert spec["loadBalancer"] == "LEAST_REQUEST"
    assert spec["retryBudget"] == {"percent": 20.0, "minRetriesPerSecond": 10.0, "ttl": "10s"}
    assert spec["routes"][0]["retries"]["backoff"] == {
        "baseInterval": "25ms",
        "maxInterval": "250ms",
    }
    assert spec["routes"][0]["timeout"] == "1500ms"
    assert spec["routes"][0]["name"] == "routes[0]"
    assert "outlierDetection" not in spec


def test_load_documents_reads_multi_document_yaml_and_skips_empty_ones() -> None:
    """Several YAML documents load in order; empty documents are skipped."""
    text = "---\napiVersion: meshlib.io/v1\nkind: A\n---\n---\nkind: B\n"
    assert load_documents(text) == [{"apiVersion": "meshlib.io/v1", "kind": "A"}, {"kind": "B"}]


def test_load_documents_reads_json() -> None:
    """A JSON document is accepted too."""
    assert load_documents(json.dumps(PEER)) == [PEER]


def test_load_documents_reports_yaml_syntax_errors_with_document_and_line() -> None:
    """A syntax error names the document index and the line."""
    text = "kind: A\n---\nkind: [unclosed\n"
    with pytest.raises(PolicyError) as info:
        load_documents(text)
    assert info.value.path == "documents[1]"
    assert "line" in info.value.reason


def test_load_documents_refuses_a_non_mapping_document() -> None:
    """A scalar or list document is refused with its index."""
    with pytest.raises(PolicyError) as info:
        load_documents("kind: A\n---\n- 1\n- 2\n")
    assert info.value.path == "documents[1]"
    assert "must be a mapping" in info.value.reason


def test_decode_documents_prefixes_paths_and_fails_the_whole_batch() -> None:
    """One invalid document fails the batch; its path is prefixed documents[i]."""
    bad = _mutated(RATE, ("spec.burst", 0))
    text = "\n---\n".join(json.dumps(d) for d in (PEER, bad))
    with pytest.raises(PolicyError) as info:
        decode_documents(text)
    assert info.value.path == "documents[1].spec.burst"
    assert str(info.value).startswith("documents[1].spec.burst: ")


def test_decode_documents_decodes_every_kind() -> None:
    """A valid batch decodes to one Resource per document, in order."""
    external = {
        "apiVersion": "meshlib.io/v1",
        "kind": "ExternalService",
        "metadata": {"name": "legacy-billing"},
        "spec": {},
    }
    docs = (TRAFFIC, AUTHZ, PEER, RATE, REQAUTH, external)
    text = "\n---\n".join(json.dumps(d) for d in docs)
    kinds = [r.kind for r in decode_documents(text)]
    assert kinds == list(m.KINDS)


def test_decode_documents_refuses_duplicates() -> None:
    """Two documents with the same kind, namespace and name are refused."""
    text = "\n---\n".join(json.dumps(d) for d in (PEER, PEER))
    with pytest.raises(
        PolicyError, match=r"^documents\[1\]\.metadata\.name: duplicate of documents\[0\]"
    ):
        decode_documents(text)


def test_status_written_by_the_server_is_ignored() -> None:
    """A top-level status (from `meshctl get -o yaml`) is ignored, so output can be re-applied."""
    from meshlib.policy.decode import decode_resource, encode_resource

    doc = {
        "apiVersion": "meshlib.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "a"},
        "spec": {"mode": "STRICT"},
    }
    plain = decode_resource(doc)
    assert decode_resource({**doc, "status": {"revision": 3}}) == plain
    assert "status" not in encode_resource(plain)
