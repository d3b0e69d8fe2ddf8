"""Inbound parity: gRPC servers (sync and aio) enforce RateLimit as HTTP does, from one admission.

Real gRPC servers (``tests/integration/grpc_app.py``) run as processes on 127.0.0.1 with the
mesh's mTLS; clients are in-process meshes with meshed channels.
"""

from __future__ import annotations

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

# One token per 1000 s: once the burst is spent, the bucket stays empty for the test.
RATE_LIMIT = """
apiVersion: meshlib.io/v1
kind: RateLimit
metadata: {name: inventory-limit, namespace: default}
spec: {service: inventory, requestsPerSecond: 0.001, burst: 2}
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


def _call(mesh: Any) -> grpc.RpcError | None:
    with meshgrpc.MeshChannel("inventory", mesh=mesh) as channel:
        try:
            pb_grpc.InventoryStub(channel).GetItem(pb.ItemRequest(item="a"), timeout=5)
        except grpc.RpcError as exc:
            return exc
    return None


@pytest.mark.parametrize("mode", ["sync", "aio"])
def test_grpc_rate_limit_refuses_and_survives_an_unrelated_snapshot(
    grpc_services: Callable[..., GrpcService], workload: Any, control: Control, mode: str
) -> None:
    """RESOURCE_EXHAUSTED with retry-after-ms once the burst is spent; a new snapshot with
    the same RateLimit keeps the empty bucket (it is not refilled by the change)."""
    server = grpc_services("inventory", mode=mode, plaintext=True)
    frontend = workload("frontend")
    wait_endpoints(frontend, "inventory")
    control.apply(RATE_LIMIT)

    def limited() -> grpc.RpcError | None:
        error = _call(frontend)
        if error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return error
        return None

    error = wait_for(limited, 15, "RateLimit applied and burst spent")
    trailing = dict(error.trailing_metadata())
    assert trailing["x-mesh-flag"] == "RATE_LIMITED"
    assert int(trailing["retry-after-ms"]) > 1000
    assert "local rate limit of inventory exceeded" in error.details()

    # An unrelated change (PERMISSIVE) makes a new snapshot; observe it over plaintext.
    control.apply(PERMISSIVE)
    with grpc.insecure_channel(f"127.0.0.1:{server.plaintext_port}") as channel:
        stub = pb_grpc.InventoryStub(channel)

        def permissive_applied() -> grpc.StatusCode | None:
            try:
                stub.GetItem(pb.ItemRequest(item="a"), timeout=5)
            except grpc.RpcError as exc:
                code = exc.code()
                return code if code != grpc.StatusCode.UNAUTHENTICATED else None
            return grpc.StatusCode.OK

        # The plaintext caller shares the service's one bucket: it is refused by the rate
        # limit, not by STRICT, once the new snapshot is active.
        assert wait_for(permissive_applied, 15, "PERMISSIVE applied") == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )
    again = _call(frontend)
    assert again is not None and again.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
