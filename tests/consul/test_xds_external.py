"""ExternalServices in sidecar mode: EDS clusters without mesh identity, accepted by the
real Envoy (``envoy --mode validate``; under CI a missing Envoy fails)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshlib.policy.decode import decode_documents
from meshlib.policy.snapshot import EXTERNAL_MODE, Endpoint
from meshlib_control.snapshot.builder import MeshState, build_snapshot
from meshlib_control.xds.external import SYSTEM_CA_FILE
from meshlib_control.xds.translate import translate
from tests.etcd_cluster import EtcdTLS
from tests.integration.test_envoy_validate import NODE, STATE, needs_envoy, validate
from tests.integration.test_envoy_validate import secrets as secrets  # the fixture
from tests.records import TD


def _docs(ca: str) -> str:
    indented = ca.replace("\n", "\n    ")
    return f"""
apiVersion: meshlib.io/v1
kind: ExternalService
metadata: {{name: legacy-plain}}
spec: {{}}
---
apiVersion: meshlib.io/v1
kind: ExternalService
metadata: {{name: legacy-tls}}
spec:
  tls: tls
  sni: billing.internal
  caCertificate: |
    {indented}
---
apiVersion: meshlib.io/v1
kind: ExternalService
metadata: {{name: legacy-system}}
spec: {{tls: tls}}
"""


def _endpoint(port: int) -> Endpoint:
    return Endpoint(f"consul:node-0/{port}", "10.9.0.1", port, (), EXTERNAL_MODE, "")


@needs_envoy
def test_external_clusters_have_no_mesh_identity_and_validate(tmp_path: Path, secrets):
    """Plaintext: no transport socket; tls: the CA inline (or the system file) and the SNI's
    DNS SAN, no client certificate; what Envoy cannot check is reported; Envoy accepts it."""
    ca = EtcdTLS.create(tmp_path / "ca").ca.read_text()
    state = MeshState(
        TD,
        decode_documents(_docs(ca)),
        STATE.instances,
        external=tuple(
            (("default", name), (_endpoint(port),))
            for name, port in (("legacy-plain", 80), ("legacy-system", 443), ("legacy-tls", 8443))
        ),
    )
    snapshot = build_snapshot(state, service="inventory", namespace="default")
    resources = translate(snapshot, node=NODE)
    clusters = {c["name"]: c for c in resources.clusters}
    plain = next(c for n, c in clusters.items() if "legacy-plain" in n)
    tls = next(c for n, c in clusters.items() if "legacy-tls" in n)
    system = next(c for n, c in clusters.items() if "legacy-system" in n)
    assert "transport_socket" not in plain
    context = tls["transport_socket"]["typed_config"]
    assert context["sni"] == "billing.internal"
    validation = context["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"inline_string": ca}
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "billing.internal"}}
    ]
    assert "tls_certificate_sds_secret_configs" not in context["common_tls_context"]
    trusted = system["transport_socket"]["typed_config"]["common_tls_context"]
    assert trusted["validation_context"]["trusted_ca"] == {"filename": SYSTEM_CA_FILE}
    notes = {(u.path, u.kind) for u in resources.unsupported}
    assert ("services[legacy-system.default].external.sni", "partial") in notes
    assert ("services[legacy-system.default].external.caCertificate", "mapped") in notes
    assignment = next(a for a in resources.endpoints if a["cluster_name"] == tls["name"])
    (group,) = assignment["endpoints"]
    address = group["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == ("10.9.0.1", 8443)
    result = validate(resources, secrets, tmp_path / "bootstrap.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_mesh_service_of_the_same_name_wins(tmp_path: Path):
    """An ExternalService named like a mesh service with live instances is not used."""
    docs = decode_documents(
        "apiVersion: meshlib.io/v1\nkind: ExternalService\nmetadata: {name: orders}\nspec: {}\n"
    )
    state = MeshState(TD, docs, STATE.instances, external=((("default", "orders"), ()),))
    snapshot = build_snapshot(state, service="inventory", namespace="default")
    (orders,) = [s for s in snapshot.services if s.name == "orders"]
    assert orders.external is None and orders.spiffe_id.endswith("/sa/orders")
    assert len(orders.endpoints) == 4


pytestmark = pytest.mark.integration
