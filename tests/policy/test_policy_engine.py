from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from meshlib.errors import PolicyError
from meshlib.policy.decode import decode_resource
from meshlib.policy.engine import PolicyEngine
from meshlib.policy.model import RetryPolicy
from meshlib.policy.routing import RoutePlan, WeightedBackend
from meshlib.policy.snapshot import Endpoint, InboundPolicy, ServiceEntry, Snapshot

TD = "mesh.local"


def endpoint(i: int, **labels: str) -> Endpoint:
    return Endpoint(
        id=f"e{i}",
        address=f"10.0.0.{i}",
        port=8443,
        labels=tuple(sorted(labels.items())),
        mode="library",
        spiffe_id=f"spiffe://{TD}/ns/default/sa/orders",
    )


V1A, V1B, V2 = endpoint(1, version="v1"), endpoint(2, version="v1"), endpoint(3, version="v2")

ORDERS_SPEC: dict[str, Any] = {
    "service": "orders",
    "loadBalancer": "ROUND_ROBIN",
    "subsets": [
        {"name": "v1", "labels": {"version": "v1"}},
        {"name": "v2", "labels": {"version": "v2"}},
        {"name": "v3", "labels": {"version": "v3"}},
    ],
    "routes": [
        {"name": "exact", "match": {"path": {"exact": "/login"}}, "backends": [{"subset": "v2"}]},
        {
            "name": "canary-header",
            "match": {"headers": [{"name": "x-canary", "exact": "1"}]},
            "backends": [{"subset": "v2"}],
            "timeout": "3s",
        },
        {
            "name": "writes",
            "match": {"path": {"prefix": "/api"}, "methods": ["POST", "PUT"]},
            "backends": [{"subset": "v1", "weight": 1}],
            "retries": {"attempts": 0},
        },
        {
            "name": "items",
            "match": {"path": {"regex": "/items/[0-9]+"}},
            "backends": [{"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 10}],
            "mirror": {"subset": "v2", "percent": 5},
        },
        {"name": "debug", "match": {"headers": [{"name": "x-debug", "regex": "on|yes"}]}},
        {"name": "traced", "match": {"headers": [{"name": "x-trace", "present": True}]}},
        {
            "name": "empty-subset",
            "match": {"path": {"prefix": "/v3"}},
            "backends": [{"subset": "v3"}],
        },
        {"name": "shadowed", "match": {"path": {"exact": "/login"}}},
    ],
    "outlierDetection": {},
}


def make_snapshot(routes: dict[str, Any] | None = None) -> Snapshot:
    policy = decode_resource(
        {
            "apiVersion": "meshlib.io/v1",
            "kind": "TrafficPolicy",
            "metadata": {"name": "orders"},
            "spec": routes if routes is not None else ORDERS_SPEC,
        }
    )
    deny = decode_resource(
        {
            "apiVersion": "meshlib.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "no-admin"},
            "spec": {"action": "DENY", "rules": [{"to": {"paths": ["/admin"]}}]},
        }
    )
    return Snapshot(
        version="abc",
        trust_domain=TD,
        service="web",
        namespace="default",
        inbound=InboundPolicy(peer_mode="PERMISSIVE", authorization=(deny,)),
        services=(
            ServiceEntry(
                "orders", "default", f"spiffe://{TD}/ns/default/sa/orders", (V1A, V1B, V2), policy
            ),
            ServiceEntry("billing", "shop", f"spiffe://{TD}/ns/shop/sa/billing", ()),
        ),
    )


ENGINE = PolicyEngine.compile(make_snapshot())


def test_engine_exposes_snapshot_version_and_peer_mode() -> None:
    """The engine carries its snapshot, version and peer mode."""
    assert ENGINE.version == "abc"
    assert ENGINE.peer_mode == "PERMISSIVE"
    assert ENGINE.snapshot == make_snapshot()


def test_engine_authorizes_with_inbound_policies() -> None:
    """authorize() applies the snapshot's inbound authorization policies."""
    assert not ENGINE.authorize(None, "GET", "/admin").allowed
    assert ENGINE.authorize(None, "GET", "/other").allowed


@pytest.mark.parametrize(
    ("host", "found"),
    [
        ("orders", "orders.default"),
        ("orders.default", "orders.default"),
        ("orders.default.svc", "orders.default"),
        ("orders.default.svc.mesh.local", "orders.default"),
        ("ORDERS.default.svc.mesh.local.", "orders.default"),
        ("billing.shop", "billing.shop"),
        ("billing", None),  # another namespace needs to be qualified
        ("billing.shop.svc.other.td", None),
        ("nope", None),
    ],
)
def test_resolve_accepts_every_alias(host: str, found: str | None) -> None:
    """Short, namespaced, .svc and fully qualified names all resolve; others give None."""
    service = ENGINE.resolve(host)
    assert (service.key if service else None) == found


def test_compiled_service_carries_identity_and_policy() -> None:
    """A compiled service exposes identity, DNS name and its policy sections."""
    orders = ENGINE.resolve("orders")
    assert orders is not None
    assert orders.spiffe_id == f"spiffe://{TD}/ns/default/sa/orders"
    assert orders.dns_name == "orders.default.svc.mesh.local"
    assert orders.load_balancer == "ROUND_ROBIN"
    assert orders.outlier_detection is not None
    assert orders.circuit_breaker is None
    assert orders.connection_pool.max_connections == 100


def test_service_without_policy_gets_defaults() -> None:
    """A service with no TrafficPolicy uses LEAST_REQUEST and the default route."""
    billing = ENGINE.resolve("billing.shop")
    assert billing is not None
    assert billing.load_balancer == "LEAST_REQUEST"
    plan = billing.route("GET", "/", {})
    assert plan.name == "default"
    assert plan.backends == (WeightedBackend(None, 100, ()),)


@pytest.mark.parametrize(
    ("method", "path", "headers", "route"),
    [
        ("GET", "/login", {}, "exact"),
        ("GET", "/login?next=/x", {}, "exact"),  # query string ignored
        ("GET", "/login/x", {}, "default"),  # exact is exact
        ("GET", "/anything", {"x-canary": "1"}, "canary-header"),
        ("GET", "/anything", {"x-canary": "0"}, "default"),
        ("POST", "/api/orders", {}, "writes"),
        ("GET", "/api/orders", {}, "default"),  # method does not match
        ("POST", "/apiary", {}, "writes"),  # prefix is a string prefix
        ("GET", "/items/42", {}, "items"),
        ("GET", "/items/42/x", {}, "default"),  # regex must match the whole path
        ("GET", "/x", {"x-debug": "yes"}, "debug"),
        ("GET", "/x", {"x-debug": "yess"}, "default"),
        ("GET", "/x", {"x-trace": ""}, "traced"),
        ("GET", "/login", {"x-canary": "1"}, "exact"),  # first match wins
    ],
)
def test_route_matching(method: str, path: str, headers: dict[str, str], route: str) -> None:
    """Routes match on path (exact/prefix/regex), methods and headers, first match wins."""
    orders = ENGINE.resolve("orders")
    assert orders is not None
    assert orders.route(method, path, headers).name == route


def test_route_plan_is_precomputed() -> None:
    """Plans carry resolved endpoints, timeout, retries and mirror; the same object each time."""
    orders = ENGINE.resolve("orders")
    assert orders is not None
    plan = orders.route("GET", "/items/1", {})
    assert plan is orders.route("GET", "/items/2", {})
    assert plan.backends == (
        WeightedBackend("v1", 90, (V1A, V1B)),
        WeightedBackend("v2", 10, (V2,)),
    )
    assert plan.mirror is not None and plan.mirror.endpoints == (V2,) and plan.mirror.percent == 5
    assert plan.retries == RetryPolicy()
    assert orders.route("GET", "/", {"x-canary": "1"}).timeout == 3.0
    assert orders.route("POST", "/api", {}).retries.attempts == 0
    default = orders.route("GET", "/", {})
    assert default.backends == (WeightedBackend(None, 100, (V1A, V1B, V2)),)
    assert default.timeout is None and default.fault is None and default.mirror is None


def test_subset_without_endpoints_still_appears() -> None:
    """A backend whose subset has no endpoints is kept with an empty endpoint tuple."""
    orders = ENGINE.resolve("orders")
    assert orders is not None
    assert orders.route("GET", "/v3", {}).backends == (WeightedBackend("v3", 100, ()),)


def _plan(*weights: int) -> RoutePlan:
    backends = tuple(WeightedBackend(f"s{i}", w, ()) for i, w in enumerate(weights))
    return RoutePlan("r", backends, None, RetryPolicy(), None, None)


def test_pick_backend_follows_weights() -> None:
    """Over many uniform draws each backend wins in proportion to its weight."""
    plan = _plan(70, 0, 20, 10)
    rng = random.Random(1)
    counts = Counter(plan.pick_backend(rng.random()).subset for _ in range(20000))
    assert counts["s1"] == 0
    assert abs(counts["s0"] / 20000 - 0.7) < 0.02
    assert abs(counts["s2"] / 20000 - 0.2) < 0.02
    assert abs(counts["s3"] / 20000 - 0.1) < 0.02


def test_pick_backend_boundaries_skip_zero_weights() -> None:
    """Draws at the edges land on positive-weight backends only."""
    plan = _plan(0, 50, 0, 50, 0)
    assert plan.pick_backend(0.0).subset == "s1"
    assert plan.pick_backend(0.5).subset == "s3"
    assert plan.pick_backend(0.9999999999999999).subset == "s3"


def test_route_plan_refuses_zero_total_weight() -> None:
    """A plan whose backends weigh nothing cannot be built."""
    with pytest.raises(PolicyError, match="total weight"):
        _plan(0, 0)


def test_fault_header_filter() -> None:
    """fault_applies() is true only when the fault's header matches all match."""
    engine = PolicyEngine.compile(
        make_snapshot(
            {
                "service": "orders",
                "routes": [
                    {
                        "fault": {
                            "abort": {"percent": 100},
                            "headers": [{"name": "x-chaos", "present": True}],
                        }
                    },
                    {"name": "none"},
                ],
            }
        )
    )
    orders = engine.resolve("orders")
    assert orders is not None
    plan = orders.route("GET", "/", {})
    assert plan.fault_applies({"x-chaos": "1"})
    assert not plan.fault_applies({})


def test_policy_engine_cannot_be_constructed_directly() -> None:
    """PolicyEngine is only built by compile()."""
    with pytest.raises(TypeError):
        PolicyEngine()
