"""Identity at every trust boundary: hostile SVIDs, forged XFCC, stale endpoints (issue 11).

The hostile leaves are signed with the mesh CA's own key (tests/attack.py), as a plugged-in
corporate CA could be made to sign them, so TLS verifies every one of them: what refuses
them is the X.509-SVID leaf check each validator runs once per connection. Before that
check (commit c96f27e and earlier) every case below was admitted by HTTP and gRPC servers
and by the control API, or refused with the wrong reason; each test says what it saw then.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from fastapi import FastAPI, Request
from prometheus_client.parser import text_string_to_metric_families

import meshlib
from meshlib.errors import PeerIdentityError
from meshlib.integrations.httpx import AsyncIdentityTransport, IdentityTransport
from tests.attack import CASES, REASONS, HostileServer, mint_case
from tests.integration.grpc_app import GrpcService, load_protos, started_services
from tests.integration.harness import Control, Service, free_port, wait_endpoints, wait_for

pytestmark = pytest.mark.integration

pb, pb_grpc = load_protos()
ORDERS = "spiffe://mesh.local/ns/default/sa/orders"
FRONTEND = "spiffe://mesh.local/ns/default/sa/frontend"
LEAF_RULE_CASES = ("ca-true", "key-cert-sign", "crl-sign")
CLAIMED_WORKLOADS = {"mallory", "x"}  # what the hostile IDs would be counted as


# --------------------------------------------------------------------- helpers


def _peer_app() -> FastAPI:
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def echo(path: str, request: Request) -> dict[str, Any]:
        return {
            "peer": request.state.mesh.peer,
            "xfcc": request.headers.getlist("x-forwarded-client-cert"),
        }

    return app


class _Served:
    """A meshed FastAPI app served by ``meshlib.MeshServer`` in a thread (real uvicorn)."""

    def __init__(self, mesh: meshlib.Mesh, *, plaintext: bool = False) -> None:
        self.port = free_port()
        self.plaintext_port = free_port() if plaintext else None
        self.server = meshlib.MeshServer(
            _peer_app(),
            mesh=mesh,
            host="127.0.0.1",
            port=self.port,
            plaintext_port=self.plaintext_port,
        )
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve()), name="trust-server", daemon=True
        )
        self._thread.start()
        wait_for(lambda: self.server.started, 20, "in-process server listening")

    def stop(self) -> None:
        self.server.stop()
        self._thread.join(10)


@pytest.fixture
def served(workload: Callable[..., meshlib.Mesh]) -> Iterator[Callable[..., _Served]]:
    started: list[_Served] = []

    def serve(name: str, **kwargs: Any) -> _Served:
        server = _Served(workload(name), **kwargs)
        started.append(server)
        return server

    yield serve
    for server in started:
        server.stop()


def _server_metric_workloads(mesh: meshlib.Mesh) -> dict[str, set[str]]:
    """``mesh_source_workload`` -> statuses, from the server's own /metrics."""
    text = httpx.get(f"http://127.0.0.1:{mesh.admin_port}/metrics", timeout=5).text
    seen: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "http_server_request_duration_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_count") and sample.value > 0:
                workload = sample.labels["mesh_source_workload"]
                seen.setdefault(workload, set()).add(sample.labels["http_response_status_code"])
    return seen


# --------------------------------------------------------------------- servers


def test_library_http_server_refuses_every_hostile_svid_and_does_not_count_it(
    served, workload, control, tmp_path
):
    """meshlib.serve answers 403 INVALID_PEER_CERT naming the broken rule, for each hostile leaf;
    its metrics never count the claimed workload. (Before: 200 for all five, counted as
    workloads "mallory" and "x".)"""
    server = served("orders")
    orders, port = server.server.mesh, server.port
    answers, errors = {}, {}
    for case in CASES:
        bad = mint_case(control.data_dir, case, tmp_path / "hostile")
        with httpx.Client(verify=bad.client_context(), timeout=5) as http:
            response = http.post(f"https://127.0.0.1:{port}/charge", content=b"{}")
        answers[case] = (response.status_code, response.headers.get("x-mesh-flag"))
        errors[case] = response.json().get("error", "")
    assert answers == {case: (403, "INVALID_PEER_CERT") for case in CASES}
    for case, error in errors.items():
        assert REASONS[case] in error, (case, error)
    # A real caller still gets in, and is counted; the refused ones never under their claim.
    frontend = workload("frontend")
    wait_endpoints(frontend, "orders")
    with frontend.client() as http:
        assert http.get("http://orders/ok").json()["peer"] == FRONTEND
    counted = wait_for(
        lambda: (seen := _server_metric_workloads(orders)).get("frontend") and seen,
        5,
        "the frontend's request in the server metrics",
    )
    assert counted.keys().isdisjoint(CLAIMED_WORKLOADS), counted
    assert counted.get("unknown") == {"403"}, counted


@pytest.fixture
def grpc_services(tmp_path: Path, control: Control) -> Iterator[Callable[..., GrpcService]]:
    yield from started_services(control, tmp_path)


@pytest.mark.parametrize("mode", ["sync", "aio"])
def test_library_grpc_server_refuses_every_hostile_svid(grpc_services, control, tmp_path, mode):
    """A meshed gRPC server answers UNAUTHENTICATED naming the broken rule, for each hostile
    leaf. (Before: four were served, and the bare trust-domain ID was refused with the wrong
    reason, "found 1 URI SAN(s)".)"""
    server = grpc_services("inventory", mode=mode)
    refusals = {}
    for case in CASES:
        bad = mint_case(control.data_dir, case, tmp_path / "hostile")
        options = [("grpc.ssl_target_name_override", "inventory.default.svc.mesh.local")]
        with grpc.secure_channel(
            f"127.0.0.1:{server.port}", bad.grpc_channel_credentials(), options=options
        ) as channel:
            stub = pb_grpc.InventoryStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetItem(pb.ItemRequest(item="a"), timeout=10)
        refusals[case] = caught.value.code()
        assert REASONS[case] in caught.value.details(), (case, caught.value.details())
        assert ("x-mesh-flag", "INVALID_PEER_CERT") in tuple(caught.value.trailing_metadata())
    assert refusals == {case: grpc.StatusCode.UNAUTHENTICATED for case in CASES}


def test_control_workload_api_refuses_every_hostile_svid_and_registers_nothing(control, tmp_path):
    """/v1/instances (register) and /v1/snapshot answer 403 naming the broken rule; the registry
    stays empty. (Before: the foreign-trust-domain and leaf-rule cases got a snapshot and
    registered an instance; the bare ID was refused as "not a workload identity".)"""
    statuses, messages = {}, {}
    for case in CASES:
        bad = mint_case(control.data_dir, case, tmp_path / "hostile")
        with httpx.Client(base_url=control.url, verify=bad.client_context(), timeout=10) as http:
            registered = http.put(
                f"/v1/instances/{case.replace('-', '')}1",
                json={"address": "127.0.0.1", "port": 9, "labels": {}, "mode": "library"},
            )
            snapshot = http.get("/v1/snapshot", params={"version": "", "wait": "0"})
        statuses[case] = (registered.status_code, snapshot.status_code)
        messages[case] = [
            r.json().get("error", {}).get("message", "") for r in (registered, snapshot)
        ]
    assert statuses == {case: (403, 403) for case in CASES}
    for case, texts in messages.items():
        assert all(REASONS[case] in text for text in texts), (case, texts)
    assert control.instances() == []


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_library_client_refuses_a_server_with_a_hostile_svid(workload, control, tmp_path, flavour):
    """A server presenting the expected SPIFFE ID on a leaf that breaks a leaf rule (a CA, or
    allowed to sign certificates or CRLs) gets a PeerIdentityError naming the rule, and no
    request. (Before: only the ID was compared, so the request was sent and answered. The
    bare and foreign IDs were already refused, as not the expected ID.)"""
    frontend = workload("frontend")
    for case in LEAF_RULE_CASES:
        bad = mint_case(control.data_dir, case, tmp_path / "hostile", spiffe_id=ORDERS)
        with HostileServer(bad) as server:
            url = f"https://127.0.0.1:{server.port}/charge"
            with pytest.raises(PeerIdentityError) as caught:
                if flavour == "sync":
                    transport = IdentityTransport(expected=ORDERS, tls=frontend.tls.client_context)
                    with httpx.Client(transport=transport) as http:
                        http.post(url, content=b"{}")
                else:

                    async def call(url: str) -> None:
                        transport = AsyncIdentityTransport(
                            expected=ORDERS, tls=frontend.tls.client_context
                        )
                        async with httpx.AsyncClient(transport=transport) as http:
                            await http.post(url, content=b"{}")

                    asyncio.run(call(url))
            assert REASONS[case] in str(caught.value), (case, caught.value)
            assert "no request was sent" in str(caught.value)
            assert server.requests == 0, case


# --------------------------------------------------------------------- XFCC


PERMISSIVE_ORDERS = """
apiVersion: meshlib.io/v1
kind: PeerAuthentication
metadata: {name: orders-permissive, namespace: default}
spec: {service: orders, mode: PERMISSIVE}
"""


def test_forged_xfcc_never_reaches_the_app(served, workload, control):
    """The app sees XFCC only as the mesh sets it: `By=<server>;URI=<verified caller>` over
    mTLS, none for a plaintext caller; a caller's own XFCC is dropped. (Before: a forged
    XFCC reached the app untouched, next to nothing of the mesh's.)"""
    server = served("orders", plaintext=True)
    frontend = workload("frontend")
    wait_endpoints(frontend, "orders")
    forged = {
        "x-forwarded-client-cert": "By=spiffe://mesh.local/x;URI=spiffe://mesh.local/ns/default/sa/admin"
    }
    with frontend.client() as http:
        body = http.get("http://orders/whoami", headers=forged).json()
    assert body == {"peer": FRONTEND, "xfcc": [f"By={ORDERS};URI={FRONTEND}"]}
    control.apply(PERMISSIVE_ORDERS)
    plain = f"http://127.0.0.1:{server.plaintext_port}/whoami"

    def admitted() -> Any:
        response = httpx.get(plain, headers=forged, timeout=5)
        return response.json() if response.status_code == 200 else None

    assert wait_for(admitted, 10, "PERMISSIVE applied") == {"peer": None, "xfcc": []}


# --------------------------------------------------------------------- stale endpoints


ORDERS_OUTLIERS = """
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {name: orders, namespace: default}
spec:
  service: orders
  loadBalancer: ROUND_ROBIN
  outlierDetection: {consecutive5xx: 2, consecutiveGatewayErrors: 2, interval: 10s,
                     baseEjectionTime: 60s, maxEjectionPercent: 50}
"""


def test_endpoint_answered_by_another_identity_is_a_connect_failure(tmp_path):
    """Of two orders endpoints, one is a port now served by inventory: every call (POST,
    not idempotent) still succeeds, retried on the good endpoint since nothing was sent,
    and the bad endpoint is ejected. (Before: PeerIdentityError surfaced on the calls that
    picked it, and it was never fed to the breaker or the outlier detector.)"""
    control = Control(tmp_path / "control", "--instance-ttl", "60s")
    control.start()
    token = control.token("orders", "--uses", "2")
    good = Service(control, "orders", tmp_path, token=token)
    stale = Service(control, "orders", tmp_path, token=token)
    impostor = Service(control, "inventory", tmp_path, port=stale.port)
    frontend: meshlib.Mesh | None = None
    try:
        good.start()
        stale.start()
        control.apply(ORDERS_OUTLIERS)
        frontend = meshlib.Mesh(
            service="frontend",
            control_url=control.url,
            token=control.token("frontend"),
            data_dir=tmp_path / "frontend",
            start_timeout=20,
        ).start()
        wait_endpoints(frontend, "orders", 2)
        wait_for(
            lambda: (
                (s := frontend.engine.resolve("orders")) is not None
                and s.outlier_detection is not None
                and s.outlier_detection.consecutive_gateway_errors == 2
            ),
            10,
            "the orders TrafficPolicy",
        )
        assert stale.process.proc is not None
        stale.process.proc.kill()  # no withdrawal: the registry keeps it for its 60 s lease
        stale.process.proc.wait(5)
        impostor.start()  # another identity answers the stale endpoint's port
        with frontend.client() as http:
            responses = [http.post("http://orders/charge", content=b"{}") for _ in range(8)]
        assert [r.status_code for r in responses] == [200] * 8
        assert {r.json()["service"] for r in responses} == {"orders"}
        assert any(r.headers.get("x-mesh-attempts") == "2" for r in responses)
        service = frontend.engine.resolve("orders")
        assert service is not None
        assert [e.port for e in service.endpoints if e.port == stale.port] == [stale.port]
        runtime = frontend.view.destinations[service.key].runtime
        assert runtime.outliers.ejected() == {f"127.0.0.1:{stale.port}"}
    finally:
        if frontend is not None:
            frontend.close()
        impostor.stop()
        stale.stop()
        good.stop()
        control.stop()
