"""Sidecar mode, live: the real Envoy driven by the control service's ADS server.

Every test runs a real control service (with ``--xds-listen``), real ``meshctl sidecar``
agents with their Envoy children, plain apps (``fault_app`` with ``PLAIN=1``: no meshlib)
and, for interop, library-mode services and clients — all on 127.0.0.1 with real mTLS.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import meshlib
from tests.integration.harness import (
    Control,
    Process,
    Service,
    stop_all,
    wait_endpoints,
    wait_for,
)
from tests.integration.sidecars import (
    APP,
    SidecarService,
    envoy_available,
    node_status,
    sid,
    xds_control,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not envoy_available(), reason="envoy binary not installed ([sidecar])"),
]


AUTHZ = f"""
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {{name: lib-allow, namespace: default}}
spec:
  service: lib
  action: ALLOW
  rules:
  - name: side-reads-allowed
    from: {{principals: ["{sid("side")}"]}}
    to: {{methods: [GET], paths: ["/allowed/*"]}}
---
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {{name: side-allow, namespace: default}}
spec:
  service: side
  action: ALLOW
  rules:
  - name: client-only
    from: {{principals: ["{sid("client")}"]}}
"""


class Mesh:
    """One test's mesh: a control service with ADS and whatever the test starts in it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        # Scrapes 2 s apart: each window holds at least one of Envoy's 1 s stats flushes.
        self.control = xds_control(tmp / "control", "--scrape-interval", "2")
        self.stoppables: list[Service | SidecarService] = []
        self.meshes: list[meshlib.Mesh] = []

    def library(self, name: str, **kwargs: object) -> Service:
        service = Service(self.control, name, self.tmp, app=APP, **kwargs)  # type: ignore[arg-type]
        self.stoppables.append(service)
        return service.start()

    def sidecar(self, name: str, **kwargs: object) -> SidecarService:
        service = SidecarService(self.control, name, self.tmp, **kwargs)  # type: ignore[arg-type]
        self.stoppables.append(service)
        return service.start()

    def client(self, name: str) -> meshlib.Mesh:
        mesh = meshlib.Mesh(
            service=name,
            control_url=self.control.url,
            token=self.control.token(name),
            data_dir=self.tmp / f"client-{name}-{len(self.meshes)}",
            start_timeout=20,
        )
        self.meshes.append(mesh)
        return mesh.start()

    def close(self) -> None:
        processes: list[Process] = []
        for service in self.stoppables:
            processes += (
                service.processes if isinstance(service, SidecarService) else [service.process]
            )
        for process in processes:
            process.terminate()
        for mesh in self.meshes:
            mesh.close()
        stop_all(processes)
        self.control.stop()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(tmp_path)
    m.control.start()
    try:
        yield m
    finally:
        m.close()


def eventually_status(call: object, status: int, what: str, timeout: float = 15) -> object:
    def ok() -> object:
        response = call()  # type: ignore[operator]
        return response if response.status_code == status else None

    return wait_for(ok, timeout, what, interval=0.2)


def test_library_and_sidecar_interoperate_both_ways_with_mtls_and_authz(mesh: Mesh) -> None:
    """library client → Envoy → plain app, and plain app → Envoy → library server; each side
    checks the other's SPIFFE ID and applies its own AuthorizationPolicy."""
    mesh.control.apply(AUTHZ)
    mesh.library("lib")
    side = mesh.sidecar("side")
    client, stranger = mesh.client("client"), mesh.client("stranger")
    wait_endpoints(client, "side")
    wait_endpoints(stranger, "side")

    # library → sidecar: Envoy terminates mTLS, RBAC admits client, the app sees who called.
    with client.client() as http:
        answer = http.get("http://side/hello")
    assert answer.status_code == 200, answer.text
    assert answer.headers["server"] == "envoy"
    assert answer.json()["peer"] == sid("client")
    with stranger.client() as http:
        denied = http.get("http://side/hello")
    assert denied.status_code == 403
    assert "RBAC" in denied.text

    # sidecar → library: Envoy originates mTLS as "side", the library's authz decides.
    allowed = eventually_status(
        lambda: side.sidecar.get("lib", "/allowed/thing"), 200, "side → lib through Envoy"
    )
    assert allowed.json()["peer"] == sid("side")  # type: ignore[attr-defined]
    other = side.sidecar.get("lib", "/not-allowed")
    assert other.status_code == 403
    assert other.headers["x-mesh-flag"] == "AUTHZ_DENIED"
    assert "lib-allow" in other.text

    # Neither side accepts a caller without a mesh certificate.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{side.sidecar.inbound_port}/hello", timeout=3)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"https://127.0.0.1:{side.sidecar.inbound_port}/hello", verify=False, timeout=3)

    # The sidecar registered as such, at its inbound port, with its admin port for scraping.
    [record] = [i for i in mesh.control.instances() if i["service"] == "side"]
    assert record["mode"] == "sidecar"
    assert record["port"] == side.sidecar.inbound_port
    metrics = side.sidecar.admin("/metrics").text
    assert "envoy_cluster_upstream_rq" in metrics
    assert "mesh_certificate_expiry_seconds" in metrics

    # The control service aggregates the sidecar's Envoy stats like a library instance's:
    # requests keep flowing until a scrape window holds some (for its percentiles).
    def side_stats() -> dict[str, object] | None:
        with client.client() as http:
            assert http.get("http://side/more").status_code == 200
        stats = json.loads(mesh.control.ok("stat", "-o", "json"))
        row = next((s for s in stats["services"] if s["service"] == "side"), None)
        return row if row and row["totalRequests"] >= 3 and row["p50Ms"] is not None else None

    row = wait_for(side_stats, 20, "golden metrics of the sidecar service", interval=0.5)
    assert row["totalFailures"] == 0
    assert row["p50Ms"] is not None


BAD_REGEX = """
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {name: lib, namespace: default}
spec:
  service: lib
  routes:
  - name: lookahead
    match: {path: {regex: "/x(?=y).*"}}
"""

GOOD_REGEX = """
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {name: lib, namespace: default}
spec:
  service: lib
  routes:
  - name: plain-regex
    match: {path: {regex: "/x[y].*"}}
"""


def side_policy(name: str) -> str:
    return f"""
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: default}}
spec:
  service: side
  action: DENY
  rules:
  - name: no-{name}
    to: {{paths: ["/{name}/*"]}}
"""


def versions(node: dict[str, object], key: str = "sentVersion") -> dict[str, object]:
    return {kind: t[key] for kind, t in node["types"].items()}  # type: ignore[attr-defined]


def test_ads_pushes_only_changed_types_records_a_nack_and_never_resends_it(mesh: Mesh) -> None:
    mesh.library("lib")
    side = mesh.sidecar("side")
    eventually_status(lambda: side.sidecar.get("lib", "/any"), 200, "side → lib")
    before = node_status(mesh.control)
    assert before["appliedVersion"] == before["snapshotVersion"]
    assert versions(before, "ackedVersion") == versions(before)

    # An AuthorizationPolicy of side changes its inbound listener (RBAC) and nothing else.
    mesh.control.apply(side_policy("first"))
    after = wait_for(
        lambda: (
            (n := node_status(mesh.control))["types"]["listeners"]["ackedVersion"]
            != before["types"]["listeners"]["ackedVersion"]
            and n
        ),
        10,
        "the new listener ACKed",
    )
    changed = {k for k, v in versions(after).items() if v != versions(before)[k]}
    assert changed == {"listeners"}
    assert after["pushes"] == before["pushes"] + 1
    assert side.sidecar.get("side", "/first/x").status_code == 403  # the new RBAC applies
    assert side.sidecar.get("side", "/other").status_code == 200

    # A regex RE2 refuses: the translator reports it, Envoy NACKs the routes.
    mesh.control.apply(BAD_REGEX)
    nacked = wait_for(
        lambda: (n := node_status(mesh.control))["types"]["routes"]["rejectedVersion"] and n,
        10,
        "the routes NACK",
    )
    routes = nacked["types"]["routes"]
    assert routes["ackedVersion"] == after["types"]["routes"]["ackedVersion"]  # old one runs
    assert "invalid perl operator: (?=" in routes["error"]  # RE2, via error_detail
    check = mesh.control.meshctl("check")
    assert check.returncode == 1
    assert "Envoy rejected routes version" in check.stdout
    assert "lookahead" in check.stdout or "RE2" in check.stdout  # the unsupported-field note
    assert side.sidecar.get("lib", "/still-served").status_code == 200

    # Another change (listeners only) does not resend the rejected routes.
    mesh.control.apply(side_policy("second"))
    later = wait_for(
        lambda: (
            (n := node_status(mesh.control))["types"]["listeners"]["ackedVersion"]
            != nacked["types"]["listeners"]["ackedVersion"]
            and n
        ),
        10,
        "the second listener ACKed",
    )
    assert later["pushes"] == nacked["pushes"] + 1
    assert later["types"]["routes"]["sentVersion"] == routes["sentVersion"]

    # Fixing the policy sends a new version, which Envoy accepts; the failure clears.
    mesh.control.apply(GOOD_REGEX)
    fixed = wait_for(
        lambda: (
            (n := node_status(mesh.control))["appliedVersion"] == n["snapshotVersion"]
            and not n["types"]["routes"]["rejectedVersion"]
            and n
        ),
        10,
        "the fixed routes ACKed",
    )
    assert fixed["types"]["routes"]["ackedVersion"] not in (
        routes["ackedVersion"],
        routes["rejectedVersion"],
    )
    assert "Envoy rejected" not in mesh.control.meshctl("check").stdout


def test_control_restart_gives_each_sidecar_the_same_configuration(mesh: Mesh) -> None:
    mesh.library("lib")
    side = mesh.sidecar("side")
    eventually_status(lambda: side.sidecar.get("lib", "/any"), 200, "side → lib")
    before = node_status(mesh.control)

    mesh.control.stop()
    # The data plane outlives the control plane.
    assert side.sidecar.get("lib", "/while-control-is-down").status_code == 200
    mesh.control.start()

    again = wait_for(
        lambda: [n for n in _nodes(mesh.control) if n["connected"] and n["types"]],
        20,
        "the sidecar reconnected",
    )[0]
    assert again["nodeId"] == before["nodeId"]
    wait_for(
        lambda: (
            versions(node_status(mesh.control), "ackedVersion") == versions(before, "ackedVersion")
        ),
        10,
        "the same versions",
    )
    assert node_status(mesh.control)["pushes"] == 0  # nothing resent, nothing rolled back
    assert side.sidecar.get("lib", "/after-restart").status_code == 200


def _nodes(control: Control) -> list[dict[str, object]]:
    from tests.integration.sidecars import sidecars_status

    return sidecars_status(control)  # type: ignore[return-value]


def test_envoy_crash_is_restarted_and_shutdown_is_clean(mesh: Mesh) -> None:
    side = mesh.sidecar("side")
    client = mesh.client("client")
    wait_endpoints(client, "side")
    old = side.sidecar.envoy_pid()
    assert old is not None
    os.kill(old, signal.SIGKILL)
    new = wait_for(
        lambda: (pid := side.sidecar.envoy_pid()) not in (None, old) and pid,
        15,
        "a new Envoy",
    )

    def served() -> bool:
        with client.client() as http:
            try:
                return http.get("http://side/again").status_code == 200
            except (meshlib.MeshError, httpx.HTTPError):  # until the new Envoy listens
                return False

    wait_for(served, 20, "traffic through the restarted Envoy", interval=0.3)
    assert side.sidecar.admin("/debug/identity").json()["envoyRestarts"] == 1

    side.sidecar.process.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    side.sidecar.process.proc.wait(15)  # type: ignore[union-attr]
    assert not Path(f"/proc/{new}").exists() or _zombie(new)
    wait_for(
        lambda: not [i for i in mesh.control.instances() if i["service"] == "side"],
        5,
        "the sidecar deregistered",
    )


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def test_sidecar_refuses_bad_flags_with_the_field_named(mesh: Mesh, tmp_path: Path) -> None:
    import subprocess
    import sys

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshlib_control.cli", "sidecar", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )

    same = run("--service", "x", "--app-port", "9000", "--inbound-port", "9000")
    assert same.returncode == 1 and "--inbound-port" in same.stderr
    bad = run("--service", "x", "--app-port", "70000")
    assert bad.returncode == 1 and "--app-port" in bad.stderr
    no_token = run(
        "--service", "x", "--app-port", "9001", "--sidecar-data-dir", str(tmp_path / "nt")
    )
    assert no_token.returncode == 1 and "MESH_TOKEN" in no_token.stderr


def test_ads_refuses_a_node_that_is_not_its_certificate(mesh: Mesh) -> None:
    """The stream's client certificate decides which service's configuration it gets."""
    import grpc
    from google.protobuf import json_format

    from meshlib_control.xds.protos.envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    client = mesh.client("client")
    svid = client.tls.svid
    xds = json.loads(mesh.control.ok("get", "sidecars", "-o", "json") or "[]")
    assert xds == []
    bundle = httpx.get(f"{mesh.control.url}/v1/bundle", verify=False, timeout=5).json()
    creds = grpc.ssl_channel_credentials(svid.bundle_pem, svid.key_pem, svid.cert_chain_pem)

    def first_answer(node: dict[str, object]) -> grpc.RpcError:
        request = discovery_pb2.DiscoveryRequest(
            type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster"
        )
        json_format.ParseDict(node, request.node)
        with grpc.secure_channel(bundle["xdsAddress"], creds) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            with pytest.raises(grpc.RpcError) as failed:
                next(iter(stub.StreamAggregatedResources(iter([request]), timeout=10)))
        return failed.value

    meta = {"inboundPort": 15006, "appPort": 8080, "outboundPort": 15001}
    impostor = first_answer({"id": "n1", "cluster": "payments", "metadata": meta})
    assert impostor.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "sa/client" in impostor.details() and "payments" in impostor.details()
    incomplete = first_answer({"id": "n1", "cluster": "client", "metadata": {"appPort": 1}})
    assert incomplete.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node.metadata.inboundPort" in incomplete.details()
    assert json.loads(mesh.control.ok("get", "sidecars", "-o", "json") or "[]") == []


INBOUND_POLICY = """
apiVersion: meshlib.io/v1
kind: PeerAuthentication
metadata: {name: side-permissive, namespace: default}
spec: {service: side, mode: PERMISSIVE}
---
apiVersion: meshlib.io/v1
kind: RateLimit
metadata: {name: side-limit, namespace: default}
spec: {service: side, requestsPerSecond: 1, burst: 3}
"""


def test_sidecar_inbound_permissive_and_rate_limit(mesh: Mesh) -> None:
    """PERMISSIVE admits plaintext on the inbound port itself; the local rate limit answers
    429 with Retry-After once the burst is spent — for mTLS and plaintext callers alike."""
    side = mesh.sidecar("side")
    plain = f"http://127.0.0.1:{side.sidecar.inbound_port}/hello"
    with pytest.raises(httpx.HTTPError):
        httpx.get(plain, timeout=3)  # STRICT by default
    mesh.control.apply(INBOUND_POLICY)
    first = wait_for(lambda: _plain_status(plain) == 200, 10, "plaintext admitted under PERMISSIVE")
    assert first
    answer = httpx.get(plain, timeout=5)
    assert answer.json()["peer"] is None  # no XFCC for a plaintext caller
    statuses = [httpx.get(plain, timeout=5) for _ in range(6)]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited, [r.status_code for r in statuses]
    assert int(limited[0].headers["retry-after"]) >= 1


def _plain_status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=3).status_code
    except httpx.HTTPError:
        return None
