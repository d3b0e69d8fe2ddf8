"""The ExternalService kind: decoding, defaults, canonical form and bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshlib.errors import PolicyError
from meshlib.policy.decode import decode_resource, encode_resource
from meshlib.policy.externalmodel import ExternalServiceSpec
from tests.etcd_cluster import EtcdTLS


def _doc(spec: Any, name: str = "legacy-billing") -> dict[str, Any]:
    return {
        "apiVersion": "meshlib.io/v1",
        "kind": "ExternalService",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec,
    }


def test_defaults_select_the_consul_service_of_the_same_name_in_plaintext():
    """An empty spec selects the Consul service named like the resource, any tag, no TLS."""
    res = decode_resource(_doc({}))
    assert res.spec == ExternalServiceSpec(consul_service="legacy-billing")
    assert decode_resource(encode_resource(res)) == res


def test_tls_with_ca_and_sni_round_trips(tmp_path: Path):
    """tls: tls with a CA bundle and an SNI name decodes and re-encodes unchanged."""
    ca = EtcdTLS.create(tmp_path).ca.read_text()
    spec = {"consul": {"service": "billing_v2", "tags": ["v1", "eu"]}, "tls": "tls",
            "caCertificate": ca, "sni": "Billing.Internal"}  # fmt: skip
    res = decode_resource(_doc(spec))
    assert res.spec == ExternalServiceSpec(
        "billing_v2", ("eu", "v1"), "tls", ca, "billing.internal"
    )
    assert decode_resource(encode_resource(res)) == res


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"tls": "mtls"}, "spec.tls: must be one of none, tls, got 'mtls'"),
        ({"sni": "a.b"}, "spec.sni: only with tls: tls"),
        ({"caCertificate": "x"}, "spec.caCertificate: only with tls: tls"),
        ({"tls": "tls", "caCertificate": "not pem"}, "spec.caCertificate: must be PEM"),
        ({"tls": "tls", "sni": "bad_name"}, "spec.sni: must be a DNS host name"),
        ({"consul": {"service": "a/b"}}, "spec.consul.service: must be a Consul service name"),
        ({"consul": {"tags": "v1"}}, "spec.consul.tags: must be a list"),
        ({"consul": {"tags": ["ok", ""]}}, "spec.consul.tags[1]:"),
        ({"consul": {"tags": [f"t{i}" for i in range(17)]}}, "spec.consul.tags: at most 16"),
        ({"consul": {"name": "x"}}, "spec.consul.name: unknown field"),
        ({"endpoints": []}, "spec.endpoints: unknown field"),
    ],
)
def test_bad_input_names_the_field(spec: Any, error: str):
    """Every bad field is refused with its path and the reason."""
    with pytest.raises(PolicyError) as info:
        decode_resource(_doc(spec))
    assert str(info.value).startswith(error), str(info.value)


def _snapshot(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "v1",
        "trustDomain": "mesh.local",
        "service": "frontend",
        "namespace": "default",
        "inbound": {"peerMode": "STRICT", "authorization": [], "rateLimit": None},
        "services": [entry],
    }


def _entry(**changes: Any) -> dict[str, Any]:
    endpoint = {"id": "consul:n/a", "address": "10.0.0.1", "port": 80, "labels": {},
                "mode": "external", "spiffeId": ""}  # fmt: skip
    entry = {"name": "legacy-billing", "namespace": "default", "spiffeId": "",
             "endpoints": [endpoint], "trafficPolicy": None,
             "external": {"consul": {"service": "billing", "tags": []}, "tls": "none"}}  # fmt: skip
    for key, value in changes.items():
        if key.startswith("endpoint_"):
            endpoint[key.removeprefix("endpoint_")] = value
        else:
            entry[key] = value
    return entry


def test_an_external_entry_round_trips_in_a_snapshot():
    """An ExternalService entry decodes with no SPIFFE ID and encodes back unchanged."""
    from meshlib.policy.engine import PolicyEngine
    from meshlib.policy.snapshot import decode_snapshot, encode_snapshot

    snap = decode_snapshot(_snapshot(_entry()))
    (entry,) = snap.services
    assert entry.spiffe_id == "" and entry.endpoints[0].spiffe_id == ""
    assert entry.external == ExternalServiceSpec("billing")
    assert encode_snapshot(snap)["services"][0] == _entry()
    service = PolicyEngine.compile(snap).resolve("legacy-billing")
    assert service is not None and service.external == entry.external


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"spiffeId": "spiffe://mesh.local/ns/default/sa/x"}, "services[0].spiffeId: must be ''"),
        ({"endpoint_mode": "library"}, "services[0].endpoints[0].mode: must be one of external"),
        ({"endpoint_spiffeId": "spiffe://mesh.local/ns/default/sa/x"},
         "services[0].endpoints[0].spiffeId: must be ''"),
        ({"external": {"tls": "mtls"}}, "services[0].external.tls: must be one of none, tls"),
    ],
)  # fmt: skip
def test_bad_external_entries_reject_the_snapshot(changes: dict[str, Any], error: str):
    """An external entry claiming an identity, or a mesh mode, is refused with its path."""
    from meshlib.policy.snapshot import decode_snapshot

    with pytest.raises(PolicyError) as info:
        decode_snapshot(_snapshot(_entry(**changes)))
    assert str(info.value).startswith(error), str(info.value)


def test_a_mesh_entry_still_needs_its_spiffe_id():
    """Without ``external`` an empty spiffeId is refused, as before."""
    from meshlib.policy.snapshot import decode_snapshot

    entry = _entry(endpoint_mode="library")
    del entry["external"]
    with pytest.raises(PolicyError, match=r"^services\[0\]\.endpoints\[0\]\.spiffeId: must be"):
        decode_snapshot(_snapshot(entry))
