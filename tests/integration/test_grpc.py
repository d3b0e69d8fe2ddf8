"""gRPC in the mesh: mTLS both ways, identities, authorization, PeerAuthentication, streams.

Real gRPC servers (``tests/integration/grpc_app.py``, sync and aio) run as processes on
127.0.0.1; the clients are in-process meshes using meshed sync and aio channels.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshlib.integrations import grpc as meshgrpc
from tests.integration.grpc_app import GrpcService, load_protos, started_services
from tests.integration.harness import Control, wait_endpoints, wait_for

pytestmark = pytest.mark.integration

pb, pb_grpc = load_protos()
FRONTEND = "spiffe://mesh.local/ns/default/sa/frontend"
GET_ITEM = "/meshlib.demo.inventory.v1.Inventory/GetItem"

ALLOW_FRONTEND_GETITEM = f"""
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {{name: inventory-allow, namespace: default}}
spec:
  service: inventory
  action: ALLOW
  rules:
  - name: frontend-reads
    from: {{principals: ["{FRONTEND}"]}}
    to: {{methods: [POST], paths: ["{GET_ITEM}"]}}
"""

PERMISSIVE = """
apiVersion: meshlib.io/v1
kind: PeerAuthentication
metadata: {name: inventory-permissive, namespace: default}
spec: {service: inventory, mode: PERMISSIVE}
"""


@pytest.fixture
def grpc_services(tmp_path: Path, control: Control) -> Iterator[Callable[..., GrpcService]]:
    """Start meshed gRPC servers; all are stopped at the end of the test."""
    yield from started_services(control, tmp_path)


def _get(mesh: Any, name: str = "a", **kwargs: Any) -> Any:
    with meshgrpc.MeshChannel("inventory", mesh=mesh, **kwargs) as channel:
        return pb_grpc.InventoryStub(channel).GetItem(pb.ItemRequest(item=name), timeout=5)


@pytest.mark.parametrize("mode", ["sync", "aio"])
def test_mtls_both_ways_sync_client(grpc_services, workload, mode):
    """A sync meshed channel reaches a sync/aio server over mTLS; each side sees the other's ID."""
    server = grpc_services("inventory", mode=mode)
    frontend = workload("frontend")
    wait_endpoints(frontend, "inventory")
    reply = _get(frontend, "apple")
    assert reply.service == "inventory"
    assert reply.port == server.port
    assert reply.caller == FRONTEND  # the server authenticated the client's SVID
    assert 0 < reply.deadline_ms <= 5000  # the call's deadline reached the handler


@pytest.mark.parametrize("mode", ["sync", "aio"])
def test_mtls_both_ways_aio_client(grpc_services, workload, mode):
    """An aio meshed channel reaches a sync/aio server over mTLS, unary and streaming."""
    grpc_services("inventory", mode=mode)
    frontend = workload("frontend")
    wait_endpoints(frontend, "inventory")

    async def calls() -> tuple[Any, list[Any], Any, list[Any]]:
        async with meshgrpc.AsyncMeshChannel("inventory", mesh=frontend) as channel:
            stub = pb_grpc.InventoryStub(channel)
            unary = await stub.GetItem(pb.ItemRequest(item="pear"), timeout=5)
            watch = [i async for i in stub.WatchStock(pb.WatchRequest(item="pear", count=4))]
            requests = [pb.ItemRequest(item=n) for n in ("a", "b", "c")]
            reserved = await stub.Reserve(iter(requests), timeout=5)
            exchanged = [i async for i in stub.Exchange(iter(requests), timeout=5)]
            return unary, watch, reserved, exchanged

    unary, watch, reserved, exchanged = asyncio.run(asyncio.wait_for(calls(), 30))
    assert unary.caller == FRONTEND
    assert [i.item for i in watch] == ["pear"] * 4
    assert list(reserved.items) == ["a", "b", "c"] and reserved.caller == FRONTEND
    assert [i.item for i in exchanged] == ["a", "b", "c"]


@pytest.mark.parametrize("mode", ["sync", "aio"])
def test_streaming_through_sync_channel(grpc_services, workload, mode):
    """Server, client and bidirectional streams pass through a sync meshed channel."""
    grpc_services("inventory", mode=mode)
    frontend = workload("frontend")
    wait_endpoints(frontend, "inventory")
    with meshgrpc.MeshChannel("inventory", mesh=frontend) as channel:
        stub = pb_grpc.InventoryStub(channel)
        watch = list(stub.WatchStock(pb.WatchRequest(item="kiwi", count=5), timeout=10))
        requests = [pb.ItemRequest(item=n) for n in ("x", "y")]
        reserved = stub.Reserve(iter(requests), timeout=5)
        exchanged = list(stub.Exchange(iter(requests), timeout=5))
    assert [i.item for i in watch] == ["kiwi"] * 5
    assert all(i.caller == FRONTEND for i in watch)
    assert list(reserved.items) == ["x", "y"]
    assert [i.item for i in exchanged] == ["x", "y"]


def test_wrong_server_identity_is_refused(tmp_path):
    """A stale endpoint whose port now serves another identity fails the handshake."""
    control = Control(tmp_path / "control", "--instance-ttl", "60s")
    control.start()
    inventory = GrpcService(control, "inventory", tmp_path)
    impostor = GrpcService(control, "billing", tmp_path, port=inventory.port)
    try:
        import meshlib

        frontend = meshlib.Mesh(
            service="frontend",
            control_url=control.url,
            token=control.token("frontend"),
            data_dir=tmp_path / "fe",
        ).start()
        inventory.start()
        wait_endpoints(frontend, "inventory")
        assert _get(frontend).caller == FRONTEND
        inventory.kill()  # no withdrawal: the registry keeps the endpoint for its TTL
        impostor.start()  # another identity, same address
        with pytest.raises(grpc.RpcError) as caught:
            _get(frontend, "b")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        entry = frontend.engine.resolve("inventory")
        assert entry is not None and [e.port for e in entry.endpoints] == [inventory.port]
        frontend.close()
    finally:
        impostor.stop()
        inventory.stop()
        control.stop()


@pytest.mark.parametrize("mode", ["sync", "aio"])
def test_authorization_denies_with_policy_and_rule(grpc_services, workload, control, mode):
    """ALLOW admits frontend's GetItem only; others get PERMISSION_DENIED naming the policy."""
    grpc_services("inventory", mode=mode)
    frontend = workload("frontend")
    intruder = workload("intruder")
    wait_endpoints(frontend, "inventory")
    wait_endpoints(intruder, "inventory")
    control.apply(ALLOW_FRONTEND_GETITEM)

    def denied() -> Any:
        try:
            _get(intruder)
        except grpc.RpcError as exc:
            return exc if exc.code() == grpc.StatusCode.PERMISSION_DENIED else None
        return None

    error = wait_for(denied, 10, "policy applied")
    assert "default/inventory-allow" in error.details()
    assert "intruder" in error.details()
    assert ("x-mesh-flag", "AUTHZ_DENIED") in tuple(error.trailing_metadata())
    assert _get(frontend).caller == FRONTEND
    with meshgrpc.MeshChannel("inventory", mesh=frontend) as channel:
        stub = pb_grpc.InventoryStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.WatchStock(pb.WatchRequest(item="a", count=1), timeout=5))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED  # path not allowed
    assert "no ALLOW rule matched" in caught.value.details()


@pytest.mark.parametrize("mode", ["sync", "aio"])
def test_plaintext_strict_then_permissive(grpc_services, control, mode):
    """STRICT refuses a plaintext gRPC call (UNAUTHENTICATED); PERMISSIVE admits it unnamed."""
    server = grpc_services("inventory", mode=mode, plaintext=True)
    with grpc.insecure_channel(f"127.0.0.1:{server.plaintext_port}") as channel:
        stub = pb_grpc.InventoryStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetItem(pb.ItemRequest(item="a"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "STRICT" in caught.value.details()
        control.apply(PERMISSIVE)

        def admitted() -> Any:
            try:
                return stub.GetItem(pb.ItemRequest(item="a"), timeout=5)
            except grpc.RpcError:
                return None

        reply = wait_for(admitted, 10, "PERMISSIVE applied")
    assert reply.caller == ""
