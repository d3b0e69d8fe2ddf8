"""gRPC channels under policy: retries, breakers, deadlines across hops, rotation, endpoints."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

import meshlib
from meshlib.identity.tls import build_client_context
from meshlib.integrations import grpc as meshgrpc
from tests.integration.grpc_app import IDEMPOTENT, GrpcService, load_protos, started_services
from tests.integration.harness import Control, wait_endpoints, wait_for

pytestmark = pytest.mark.integration

pb, pb_grpc = load_protos()

BREAKER = """
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {name: inventory, namespace: default}
spec:
  service: inventory
  circuitBreaker: {consecutiveFailures: 3, resetTimeout: 30s}
"""

SUBSETS = """
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {name: inventory, namespace: default}
spec:
  service: inventory
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  routes:
  - name: only-SUBSET
    backends: [{subset: SUBSET, weight: 100}]
"""


@pytest.fixture
def grpc_services(tmp_path: Path, control: Control) -> Iterator[Callable[..., GrpcService]]:
    """Start meshed gRPC servers; all are stopped at the end of the test."""
    yield from started_services(control, tmp_path)


@pytest.mark.parametrize("mode", ["sync", "aio"])
def test_retries_only_marked_methods_and_succeed(grpc_services, workload, mode):
    """UNAVAILABLE is retried for a method marked idempotent; an unmarked call fails at once."""
    grpc_services("inventory", mode=mode)
    frontend = workload("frontend")
    wait_endpoints(frontend, "inventory")
    with meshgrpc.MeshChannel("inventory", mesh=frontend, idempotent_methods=IDEMPOTENT) as ch:
        reply = pb_grpc.InventoryStub(ch).GetItem(pb.ItemRequest(item="flaky:k1:2"), timeout=5)
    assert reply.item == "flaky:k1:2"  # two failures, then the third try answered
    with meshgrpc.MeshChannel("inventory", mesh=frontend) as ch:
        stub = pb_grpc.InventoryStub(ch)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetItem(pb.ItemRequest(item="flaky:k2:1"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert stub.GetItem(pb.ItemRequest(item="flaky:k2:1"), timeout=5).item  # 2nd call ok

    async def aio_retry() -> Any:
        async with meshgrpc.AsyncMeshChannel(
            "inventory", mesh=frontend, idempotent_methods=IDEMPOTENT
        ) as channel:
            return await pb_grpc.InventoryStub(channel).GetItem(
                pb.ItemRequest(item="flaky:k3:2"), timeout=5
            )

    assert asyncio.run(asyncio.wait_for(aio_retry(), 30)).item == "flaky:k3:2"


def test_breaker_opens_after_consecutive_failures(grpc_services, workload, control):
    """Three UNAVAILABLE answers open the endpoint's breaker; the next call fails fast."""
    grpc_services("inventory")
    control.apply(BREAKER)
    frontend = workload("frontend")
    wait_endpoints(frontend, "inventory")
    wait_for(lambda: frontend.engine.resolve("inventory").circuit_breaker is not None, 10, "policy")
    with meshgrpc.MeshChannel("inventory", mesh=frontend) as channel:
        stub = pb_grpc.InventoryStub(channel)
        for _ in range(3):
            with pytest.raises(grpc.RpcError):
                stub.GetItem(pb.ItemRequest(item="down:x"), timeout=5)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetItem(pb.ItemRequest(item="fine"), timeout=5)
    error = caught.value
    assert isinstance(error, meshgrpc.MeshRpcError)
    assert isinstance(error.mesh_error, meshlib.CircuitOpen)
    assert error.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("mode", ["sync", "aio"])
def test_deadline_propagates_across_two_hops(grpc_services, workload, mode):
    """The caller's deadline reaches the second hop, and a slow second hop fails in time."""
    grpc_services("inventory", mode=mode)
    grpc_services("warehouse", mode=mode)
    frontend = workload("frontend")
    wait_endpoints(frontend, "inventory")
    wait_endpoints(frontend, "warehouse")
    with meshgrpc.MeshChannel("inventory", mesh=frontend) as channel:
        stub = pb_grpc.InventoryStub(channel)
        via = wait_for(lambda: _via(stub, "a", 3.0), 15, "inventory sees warehouse", interval=0.3)
        # The second hop works to the caller's 3 s, not to its own 15 s default. Readings
        # of two processes are compared: each truncates to whole ms, the timeout travels
        # rounded up, and grpc's time_remaining() uses the core's cached clock, so the later
        # hop can read a few ms more than the earlier one (seen: up to 4 ms under load).
        assert 0 < via.upstream.deadline_ms <= via.local.deadline_ms + 10
        assert via.local.deadline_ms <= 3000 and via.upstream.deadline_ms <= 3000
        assert via.upstream.service == "warehouse"
        assert via.upstream.caller == "spiffe://mesh.local/ns/default/sa/inventory"
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetItemVia(pb.ViaRequest(service="warehouse", item="sleep:5"), timeout=1.0)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 2.5


def _via(stub: Any, item: str, timeout: float) -> Any:
    try:
        return stub.GetItemVia(pb.ViaRequest(service="warehouse", item=item), timeout=timeout)
    except grpc.RpcError:
        return None


def test_channel_follows_subsets_and_endpoints(grpc_services, workload, control):
    """One channel follows policy and endpoint changes: v2 only, then v1 only, then v1 gone."""
    v1 = grpc_services("inventory", labels="version=v1")
    grpc_services("inventory", labels="version=v2")
    frontend = workload("frontend")
    wait_endpoints(frontend, "inventory", 2)
    with meshgrpc.MeshChannel("inventory", mesh=frontend) as channel:
        stub = pb_grpc.InventoryStub(channel)

        def versions() -> set[str]:
            return {stub.GetItem(pb.ItemRequest(item="a"), timeout=5).version for _ in range(8)}

        wait_for(lambda: versions() == {"v1", "v2"}, 10, "both versions")
        control.apply(SUBSETS.replace("SUBSET", "v2"))
        wait_for(lambda: versions() == {"v2"}, 10, "v2 only")
        control.apply(SUBSETS.replace("SUBSET", "v1"))
        wait_for(lambda: versions() == {"v1"}, 10, "v1 only")
        control.ok("delete", "TrafficPolicy", "inventory")
        v1.stop()  # withdraws its endpoint first
        wait_endpoints_exactly(frontend, 1)
        assert versions() == {"v2"}


def wait_endpoints_exactly(mesh: Any, count: int) -> None:
    """Wait until inventory has exactly *count* endpoints in *mesh*'s snapshot."""

    def ready() -> bool:
        entry = mesh.engine.resolve("inventory")
        return entry is not None and len(entry.endpoints) == count

    wait_for(ready, 15, f"{count} inventory endpoint(s)")


def _server_serial(mesh: Any, port: int) -> int:
    """Serial of the certificate the gRPC server presents to a new handshake."""
    ctx = build_client_context(mesh.tls.svid, mesh.tls.svid.bundle_pem, mesh.config.cache_dir)
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="inventory.default.svc.mesh.local") as tls,
    ):
        der = tls.getpeercert(True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


TRAFFIC_SECONDS = 20.0  # at most; the run ends 50 RPCs after both sides have rotated


@pytest.mark.parametrize("mode", ["sync", "aio"])
def test_rotation_under_traffic_has_zero_failed_rpcs(tmp_path: Path, mode):
    """With 10 s SVIDs, both sides rotate mid-run and every RPC still succeeds."""
    control = Control(tmp_path / "control", "--svid-ttl", "10s", "--instance-ttl", "5s")
    control.start()
    server = GrpcService(control, "inventory", tmp_path, mode=mode).start()
    client = meshlib.Mesh(
        service="frontend",
        control_url=control.url,
        token=control.token("frontend"),
        data_dir=tmp_path / "fe",
    ).start()
    try:
        wait_endpoints(client, "inventory")
        first_client, first_server = client.tls.svid.serial, _server_serial(client, server.port)
        failures: list[str] = []
        sent, stop_at = 0, 20_000
        with meshgrpc.MeshChannel("inventory", mesh=client, grace=5.0) as channel:
            stub = pb_grpc.InventoryStub(channel)
            deadline = time.monotonic() + TRAFFIC_SECONDS
            while time.monotonic() < deadline and sent < stop_at:
                try:
                    stub.GetItem(pb.ItemRequest(item=str(sent)), timeout=5)
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code()}: {exc.details()}")
                sent += 1
                if (
                    stop_at == 20_000
                    and sent % 25 == 0
                    and client.tls.svid.serial != first_client
                    and _server_serial(client, server.port) != first_server
                ):
                    stop_at = max(sent + 50, 201)  # both rotated: a few more, then stop
                time.sleep(0.01)
        assert failures == []
        assert sent > 200
        assert client.tls.svid.serial != first_client, "client SVID never rotated"
        assert _server_serial(client, server.port) != first_server, "server cert never rotated"
        assert "svid rotated" in server.process.output()
    finally:
        client.close()
        server.stop()
        control.stop()
