"""``meshctl run``: unmodified apps (examples/unmodified, no meshlib import) in the mesh.

A FastAPI pair calling each other with httpx under ``uvicorn`` (CLI and ``uvicorn.run``),
an aio gRPC pair, gunicorn with two UvicornWorkers: mTLS with the SVID, authz deny, retries
and tracing as in library mode; calls to names outside the mesh go out unchanged.
"""

from __future__ import annotations

import http.server
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

import meshlib
from examples.generated import inventory_pb2 as pb
from examples.generated import inventory_pb2_grpc as pb_grpc
from tests.integration.harness import MESHCTL, Control, Process, free_port, wait_for

pytestmark = pytest.mark.integration

TD = "spiffe://mesh.local/ns/default/sa"

POLICY = """\
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {name: inventory-from-orders}
spec:
  service: inventory
  action: ALLOW
  rules:
  - from: {principals: ["spiffe://mesh.local/ns/default/sa/orders"]}
---
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {name: inventory}
spec:
  service: inventory
  routes:
  - name: retried
    retries: {attempts: 3, retryOn: [5xx], backoff: {baseInterval: 5ms, maxInterval: 20ms}}
---
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {name: grpc-back-from-grpc-front}
spec:
  service: grpc-back
  action: ALLOW
  rules:
  - from: {principals: ["spiffe://mesh.local/ns/default/sa/grpc-front"]}
"""


class Run:
    """``meshctl run --service NAME -- COMMAND…`` as a subprocess with its log."""

    def __init__(
        self, control: Control, workdir: Path, service: str, command: list[str], **env: str
    ) -> None:
        self.service = service
        self.port = int(env.pop("PORT", "0")) or free_port()
        environ = {
            "MESH_CONTROL_URL": control.url,
            "MESH_TOKEN": control.token(service),
            "MESH_DATA_DIR": str(workdir / f"run-{service}-{self.port}"),
            "MESH_START_TIMEOUT": "15",
            "PORT": str(self.port),
            **env,
        }
        command = [part.replace("{port}", str(self.port)) for part in command]
        self.process = Process(
            [*MESHCTL, "run", "--service", service, "--", *command],
            workdir / f"run-{service}-{self.port}.log",
            environ,
        )

    def start(self) -> Run:
        self.process.start()
        return self

    def wait(self, timeout: float = 20) -> int:
        assert self.process.proc is not None
        return self.process.proc.wait(timeout)


@pytest.fixture
def run(tmp_path: Path, control: Control) -> Iterator[Callable[..., Run]]:
    started: list[Run] = []

    def start(service: str, command: list[str], **env: str) -> Run:
        runner = Run(control, tmp_path, service, command, **env).start()
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.process.stop()


def uvicorn_cli(module: str) -> list[str]:
    return [sys.executable, "-m", "uvicorn", f"{module}:app", "--port", "{port}"]


class _Outside(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        body = b"outside says hi"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def test_fastapi_pair_over_httpx(
    run: Callable[..., Run], control: Control, workload: Callable[..., meshlib.Mesh]
) -> None:
    """orders (uvicorn.run) -> inventory (uvicorn CLI) by name: mTLS, deny, retries, trace."""
    control.apply(POLICY)
    outside = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Outside)
    threading.Thread(target=outside.serve_forever, daemon=True).start()
    try:
        inventory = run("inventory", uvicorn_cli("examples.unmodified.inventory"))
        orders = run(
            "orders",
            [
                sys.executable,
                "-c",
                "import uvicorn; uvicorn.run('examples.unmodified.orders:app', "
                "host='127.0.0.1', port={port})",
            ],
            UPSTREAM="inventory",
            OUTSIDE_URL=f"http://127.0.0.1:{outside.server_address[1]}/",
        )
        control.wait_serving("inventory")
        control.wait_serving("orders")
        front = workload("frontend")
        wait_for(lambda: front.engine.resolve("inventory") is not None, 10, "inventory")
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        with front.client(timeout=10) as web:
            reply = web.get(
                "http://orders/order/apple",
                headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
            )
            assert reply.status_code == 200, (reply.text, orders.process.output())
            body = reply.json()
            # inventory saw an mTLS request from orders' SVID, in the caller's trace.
            assert body["status"] == 200, body
            assert body["body"]["scheme"] == "https"
            assert body["body"]["xfcc"] == f"By={TD}/inventory;URI={TD}/orders"
            assert body["body"]["traceparent"].split("-")[1] == trace_id
            # Retries: the route retries 5xx; inventory fails twice, the third try answers.
            flaky = web.get("http://orders/order/key1?flaky=1").json()
            assert flaky["status"] == 200 and flaky["body"] == {"asked": 3}, flaky
            # authz deny: frontend may not call inventory, exactly as in library mode.
            denied = web.get("http://inventory/item/apple")
            assert denied.status_code == 403
            assert denied.headers["x-mesh-flag"] == "AUTHZ_DENIED"
            assert "inventory-from-orders" in denied.text
            # A host that is not a mesh service goes out unchanged (plain HTTP here).
            out = web.get("http://orders/outside").json()
            assert out == {"status": 200, "body": "outside says hi"}
        assert inventory.process.alive() and orders.process.alive()
    finally:
        outside.shutdown()
        outside.server_close()


def test_grpc_aio_pair(
    run: Callable[..., Run], control: Control, workload: Callable[..., meshlib.Mesh]
) -> None:
    """grpc-front -> grpc-back over grpc.aio.insecure_channel('grpc-back:50051'), meshed."""
    control.apply(POLICY)
    command = [sys.executable, "-m", "examples.unmodified.grpc_pair"]
    run("grpc-back", command)
    run("grpc-front", command)
    control.wait_serving("grpc-back")
    control.wait_serving("grpc-front")
    client = workload("grpc-client")
    wait_for(lambda: client.engine.resolve("grpc-back") is not None, 10, "grpc-back")
    with client.grpc_channel("grpc-front") as channel:
        stub = pb_grpc.InventoryStub(channel)
        reply = stub.GetItemVia(pb.ViaRequest(service="grpc-back", item="apple"), timeout=10)
        assert reply.local.caller == f"{TD}/grpc-client"
        assert reply.upstream.caller == f"{TD}/grpc-front"
        assert reply.upstream.service == "grpc-back"
    with client.grpc_channel("grpc-back") as channel:
        with pytest.raises(grpc.RpcError) as denied:
            pb_grpc.InventoryStub(channel).GetItem(pb.ItemRequest(item="apple"), timeout=10)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "grpc-back-from-grpc-front" in (denied.value.details() or "")
