from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from meshlib.errors import PolicyError
from meshlib.policy.decode import decode_resource
from meshlib.policy.snapshot import (
    Endpoint,
    InboundPolicy,
    ServiceEntry,
    Snapshot,
    compute_version,
    decode_snapshot,
    encode_snapshot,
    snapshot_version,
)

TD = "mesh.local"


def _resource(kind: str, name: str, spec: dict[str, Any], namespace: str = "default") -> Any:
    return decode_resource(
        {
            "apiVersion": "meshlib.io/v1",
            "kind": kind,
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


def _endpoint(i: int, **labels: str) -> Endpoint:
    return Endpoint(
        id=f"orders-{i}",
        address=f"10.0.0.{i}",
        port=8443,
        labels=tuple(sorted(labels.items())),
        mode="library",
        spiffe_id=f"spiffe://{TD}/ns/default/sa/orders",
    )


def make_snapshot() -> Snapshot:
    orders = ServiceEntry(
        name="orders",
        namespace="default",
        spiffe_id=f"spiffe://{TD}/ns/default/sa/orders",
        endpoints=(_endpoint(1, version="v1", zone="a"), _endpoint(2, version="v2")),
        traffic_policy=_resource(
            "TrafficPolicy",
            "orders",
            {"service": "orders", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]},
        ),
    )
    billing = ServiceEntry(
        name="billing",
        namespace="shop",
        spiffe_id=f"spiffe://{TD}/ns/shop/sa/billing",
        endpoints=(),
    )
    inbound = InboundPolicy(
        peer_mode="PERMISSIVE",
        authorization=(_resource("AuthorizationPolicy", "allow", {"rules": []}),),
        rate_limit=_resource("RateLimit", "rl", {"service": "web", "requestsPerSecond": 5}),
    )
    return Snapshot(
        version="v-test",
        trust_domain=TD,
        service="web",
        namespace="default",
        inbound=inbound,
        services=(orders, billing),
    )


def test_snapshot_round_trips_through_json() -> None:
    """decode_snapshot(encode_snapshot(s)) == s, through a JSON text."""
    snap = make_snapshot()
    body = json.loads(json.dumps(encode_snapshot(snap)))
    assert decode_snapshot(body) == snap


def test_endpoint_helpers() -> None:
    """Endpoints expose label(), zone and authority (IPv6 in brackets)."""
    ep = _endpoint(1, version="v1", zone="a")
    assert ep.label("version") == "v1"
    assert ep.label("missing") is None
    assert ep.zone == "a"
    assert ep.authority == "10.0.0.1:8443"
    v6 = Endpoint("x", "::1", 80, (), "sidecar", "spiffe://td/ns/a/sa/b")
    assert v6.authority == "[::1]:80"
    assert v6.zone is None


def test_decode_sorts_services_by_namespace_and_name() -> None:
    """Decoded services come in (namespace, name) order whatever the input order."""
    body = encode_snapshot(make_snapshot())
    body["services"].reverse()
    names = [(s.namespace, s.name) for s in decode_snapshot(body).services]
    assert names == [("default", "orders"), ("shop", "billing")]


def test_snapshot_version_ignores_the_version_field_and_is_stable() -> None:
    """The version hashes everything but 'version', independent of key order."""
    body = encode_snapshot(make_snapshot())
    version = snapshot_version(body)
    assert len(version) == 16
    assert int(version, 16) >= 0
    reordered = dict(reversed(list({**body, "version": "other"}.items())))
    assert snapshot_version(reordered) == version
    assert compute_version(make_snapshot()) == version


def test_snapshot_version_changes_with_content() -> None:
    """Any content change gives another version."""
    body = encode_snapshot(make_snapshot())
    changed = copy.deepcopy(body)
    changed["services"][0]["endpoints"][0]["port"] = 9443
    assert snapshot_version(changed) != snapshot_version(body)


def _set(body: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    node = out
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return out


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (["trustDomain"], "", "trustDomain"),
        (["service"], "Web", "service"),
        (["inbound", "peerMode"], "OFF", "inbound.peerMode"),
        (["inbound", "authorization"], "x", "inbound.authorization"),
        (
            ["inbound", "authorization", 0, "spec", "action"],
            "MAYBE",
            "inbound.authorization[0].spec.action",
        ),
        (
            ["inbound", "authorization", 0, "kind"],
            "RateLimit",
            "inbound.authorization[0].spec.action",
        ),
        (["services", 0, "endpoints", 0, "port"], 0, "services[0].endpoints[0].port"),
        (["services", 0, "endpoints", 0, "port"], True, "services[0].endpoints[0].port"),
        (["services", 0, "endpoints", 0, "mode"], "proxy", "services[0].endpoints[0].mode"),
        (["services", 0, "endpoints", 0, "labels"], {"a": 1}, "services[0].endpoints[0].labels"),
        (
            ["services", 0, "endpoints", 0, "spiffeId"],
            "orders",
            "services[0].endpoints[0].spiffeId",
        ),
        (["services", 0, "endpoints", 0, "extra"], 1, "services[0].endpoints[0].extra"),
        (
            ["services", 0, "trafficPolicy", "spec", "service"],
            "billing",
            "services[0].trafficPolicy.spec.service",
        ),
        (
            ["services", 0, "trafficPolicy", "spec", "routes"],
            [{"timeout": "0s"}],
            "services[0].trafficPolicy.spec.routes[0].timeout",
        ),
        (["services", 1, "name"], "Billing", "services[1].name"),
        (["services", 1, "spiffeId"], "billing", "services[1].spiffeId"),
    ],
)
def test_malformed_snapshots_name_the_field(path: list[Any], value: Any, expected: str) -> None:
    """Anything malformed in a snapshot raises PolicyError with the path of the field."""
    body = _set(encode_snapshot(make_snapshot()), path, value)
    with pytest.raises(PolicyError) as info:
        decode_snapshot(body)
    assert info.value.path == expected


def test_missing_snapshot_field_is_required() -> None:
    """A missing top-level field is reported as required."""
    body = encode_snapshot(make_snapshot())
    del body["inbound"]
    with pytest.raises(PolicyError, match=r"^inbound: required"):
        decode_snapshot(body)


def test_resource_of_the_wrong_kind_is_refused() -> None:
    """A valid resource of another kind in a typed slot is refused at its kind."""
    body = encode_snapshot(make_snapshot())
    body["inbound"]["authorization"] = [body["inbound"]["rateLimit"]]
    with pytest.raises(PolicyError) as info:
        decode_snapshot(body)
    assert info.value.path == "inbound.authorization[0].kind"
    assert info.value.reason == "must be AuthorizationPolicy, got RateLimit"


def test_duplicate_services_are_refused() -> None:
    """Two entries for the same service and namespace are refused."""
    body = encode_snapshot(make_snapshot())
    body["services"].append(copy.deepcopy(body["services"][0]))
    with pytest.raises(PolicyError, match=r"^services\[2\]: duplicate service orders.default"):
        decode_snapshot(body)
