"""The ADS stream's bookkeeping, request by request, against a real ControlPlane (tmp dir).

The live behaviour with the real Envoy is in tests/integration/test_sidecar.py; these pin
the protocol rules one at a time: stale nonces, ACK, NACK (recorded, never resent),
reconnect with the current version (nothing sent), subscriptions by name, node validation.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import json_format
from google.rpc import status_pb2

from meshlib.identity.spiffe import SpiffeId
from meshlib_control.plane import ControlPlane
from meshlib_control.settings import Settings
from meshlib_control.xds.ads import NodeError, _Stream, node_from_request
from meshlib_control.xds.protos.envoy.config.core.v3 import base_pb2
from meshlib_control.xds.protos.envoy.service.discovery.v3 import discovery_pb2
from meshlib_control.xds.translate import TYPE_URLS, SidecarNode, cluster_name

TD = "mesh.local"
CDS, EDS, LDS, RDS = (TYPE_URLS[k] for k in ("clusters", "endpoints", "listeners", "routes"))

AUTHZ = """
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {name: side-deny, namespace: default}
spec:
  service: side
  action: DENY
  rules:
  - {name: no-admin, to: {paths: ["/admin"]}}
"""


@pytest.fixture
def plane(tmp_path: Path) -> ControlPlane:
    plane = ControlPlane(Settings(data_dir=tmp_path / "control"))
    lib = SpiffeId.for_service(TD, "default", "lib")
    plane.register("lib1", {"address": "127.0.0.1", "port": 9001}, lib)
    side = SpiffeId.for_service(TD, "default", "side")
    plane.register("side1", {"address": "127.0.0.1", "port": 9002, "mode": "sidecar"}, side)
    return plane


NODE = SidecarNode(
    service="side",
    namespace="default",
    trust_domain=TD,
    inbound_port=9002,
    app_port=8080,
    outbound_port=9003,
    secrets_dir="/run/side/secrets",
)


def request(type_url: str, *, version: str = "", nonce: str = "", names: tuple[str, ...] = (),
            error: str | None = None) -> discovery_pb2.DiscoveryRequest:  # fmt: skip
    req = discovery_pb2.DiscoveryRequest(
        type_url=type_url, version_info=version, response_nonce=nonce, resource_names=names
    )
    if error is not None:
        req.error_detail.CopyFrom(status_pb2.Status(code=13, message=error))
    return req


def stream(plane: ControlPlane) -> _Stream:
    s = _Stream(plane, "side1", NODE)
    s.load()
    return s


def test_first_request_is_answered_and_the_ack_is_recorded(plane: ControlPlane) -> None:
    s = stream(plane)
    [cds] = s.handle(request(CDS))
    assert cds.type_url == CDS and cds.nonce == "1"
    names = sorted(_name(r, "clusters") for r in cds.resources)
    assert cluster_name("lib", "default") in names
    assert s.handle(request(CDS, version=cds.version_info, nonce=cds.nonce)) == []
    assert s.status.types["clusters"].acked_version == cds.version_info


def test_a_stale_nonce_is_ignored(plane: ControlPlane) -> None:
    s = stream(plane)
    [first] = s.handle(request(LDS))
    plane.apply(AUTHZ)
    s.load()
    [second] = s.changed()
    assert second.nonce != first.nonce
    # Envoy's ACK of the first response arrives after the second was sent: stale.
    assert s.handle(request(LDS, version=first.version_info, nonce=first.nonce)) == []
    assert s.status.types["listeners"].acked_version is None


def test_a_nack_is_recorded_and_that_version_is_never_resent(plane: ControlPlane) -> None:
    s = stream(plane)
    [first] = s.handle(request(LDS))
    s.handle(request(LDS, version=first.version_info, nonce=first.nonce))
    plane.apply(AUTHZ)
    s.load()
    [bad] = s.changed()
    assert s.handle(request(LDS, version=first.version_info, nonce=bad.nonce, error="boom")) == []
    status = s.status.types["listeners"]
    assert (status.rejected_version, status.error) == (bad.version_info, "boom")
    assert status.acked_version == first.version_info
    assert s.changed() == []  # the snapshot did not change: nothing to (re)send
    record = plane.store.instance("side1")
    assert record is not None and record.rejected_version == s.snapshot_version
    assert "Envoy rejected listeners" in (record.rejection or "")


def test_a_reconnect_with_the_current_version_gets_nothing(plane: ControlPlane) -> None:
    s = stream(plane)
    [cds] = s.handle(request(CDS))
    again = stream(plane)  # a new stream, as after a control-service restart
    assert again.handle(request(CDS, version=cds.version_info)) == []
    assert again.status.types["clusters"].acked_version == cds.version_info
    stale = stream(plane)
    [resent] = stale.handle(request(CDS, version="an-older-version"))
    assert resent.version_info == cds.version_info


def test_named_subscriptions_get_only_their_resources(plane: ControlPlane) -> None:
    s = stream(plane)
    wanted = cluster_name("lib", "default")
    [eds] = s.handle(request(EDS, names=(wanted,)))
    assert [_name(r, "endpoints") for r in eds.resources] == [wanted]
    # A new subscription (more names) is answered even on an ACK of the same version.
    both = (wanted, cluster_name("side", "default"))
    [more] = s.handle(request(EDS, version=eds.version_info, nonce=eds.nonce, names=both))
    assert sorted(_name(r, "endpoints") for r in more.resources) == sorted(both)


def test_only_the_changed_types_are_pushed(plane: ControlPlane) -> None:
    s = stream(plane)
    for url in (CDS, EDS, LDS, RDS):
        [resp] = s.handle(
            request(url, names=(cluster_name("lib", "default"),) if url == EDS else ())
        )
        s.handle(request(url, version=resp.version_info, nonce=resp.nonce,
                         names=tuple(resp_names(resp)) if url == EDS else ()))  # fmt: skip
    plane.apply(AUTHZ)
    s.load()
    assert [r.type_url for r in s.changed()] == [LDS]
    plane.register("lib2", {"address": "127.0.0.1", "port": 9009},
                   SpiffeId.for_service(TD, "default", "lib"))  # fmt: skip
    s.load()
    assert [r.type_url for r in s.changed()] == [EDS]


def resp_names(resp: discovery_pb2.DiscoveryResponse) -> list[str]:
    return [_name(r, "endpoints") for r in resp.resources]


def _name(packed: object, kind: str) -> str:
    from meshlib_control.xds.ads import _MESSAGES, _NAME_KEY

    message = _MESSAGES[kind]()
    packed.Unpack(message)  # type: ignore[attr-defined]
    return str(
        json_format.MessageToDict(message, preserving_proto_field_name=True)[_NAME_KEY[kind]]
    )


@pytest.mark.parametrize(
    ("node", "field"),
    [
        ({"cluster": "side", "metadata": {}}, "node.id"),
        ({"id": "n1", "metadata": {}}, "node.cluster"),
        ({"id": "n1", "cluster": "side", "metadata": {}}, "node.metadata.inboundPort"),
        (
            {"id": "n1", "cluster": "side",
             "metadata": {"inboundPort": 70000, "appPort": 1, "outboundPort": 2}},
            "node.metadata.inboundPort",
        ),
        (
            {"id": "n1", "cluster": "side",
             "metadata": {"inboundPort": 1, "appPort": "x", "outboundPort": 2}},
            "node.metadata.appPort",
        ),
    ],
)  # fmt: skip
def test_a_node_that_cannot_be_served_is_refused_naming_the_field(node: dict, field: str) -> None:
    message = json_format.ParseDict(node, base_pb2.Node())
    with pytest.raises(NodeError, match=field.replace(".", r"\.")):
        node_from_request(message, TD)


def test_a_complete_node_becomes_a_sidecar_node() -> None:
    message = json_format.ParseDict(
        {
            "id": "n1",
            "cluster": "side",
            "metadata": {
                "namespace": "shop",
                "inboundPort": 15006,
                "appPort": 8080,
                "outboundPort": 15001,
                "zone": "a",
                "secretsDir": "/s",
            },
        },
        base_pb2.Node(),
    )
    node_id, node = node_from_request(message, TD)
    assert node_id == "n1"
    assert (node.namespace, node.inbound_port, node.zone, node.secrets_dir) == (
        "shop",
        15006,
        "a",
        "/s",
    )
    assert node.spiffe_id == f"spiffe://{TD}/ns/shop/sa/side"
