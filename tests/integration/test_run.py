"""``meshctl run``: unmodified apps (examples/unmodified, no meshlib import) in the mesh.

A FastAPI pair calling each other with httpx under ``uvicorn`` (CLI and ``uvicorn.run``),
an aio gRPC pair, gunicorn with two UvicornWorkers: mTLS with the SVID, authz deny, retries
and tracing as in library mode; calls to names outside the mesh go out unchanged.
"""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest

import meshlib
from examples.generated import inventory_pb2 as pb
from examples.generated import inventory_pb2_grpc as pb_grpc
from tests.integration.harness import MESHCTL, Control, Process, free_port, stop_all, wait_for

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
  - from:
      principals:
      - spiffe://mesh.local/ns/default/sa/grpc-front
      - spiffe://mesh.local/ns/default/sa/grpc-sync
"""


class Run:
    """``meshctl run --service NAME -- COMMAND…`` as a subprocess with its log."""

    def __init__(
        self, control: Control, workdir: Path, service: str, command: list[str], **env: str
    ) -> None:
        self.service = service
        self.port = int(env.pop("PORT", "0")) or free_port()
        launcher = env.pop("LAUNCHER", "python -m meshlib.run").split()
        self.flags = env.pop("RUN_FLAGS", "").split()
        environ = {
            "MESH_CONTROL_URL": control.url,
            "MESH_TOKEN": env.pop("MESH_TOKEN") if "MESH_TOKEN" in env else control.token(service),
            "MESH_DATA_DIR": str(workdir / f"run-{service}-{self.port}"),
            "MESH_START_TIMEOUT": "15",
            "PORT": str(self.port),
            **env,
        }
        command = [part.replace("{port}", str(self.port)) for part in command]
        self.process = Process(
            [
                *(MESHCTL if launcher == ["meshctl"] else [sys.executable, "-m", "meshlib.run"]),
                *(["run"] if launcher == ["meshctl"] else []),
                "--service",
                service,
                *self.flags,
                "--",
                *command,
            ],
            workdir / f"run-{service}-{self.port}.log",
            environ,
        )

    def start(self) -> Run:
        self.process.start()
        return self

    def wait(self, timeout: float = 20) -> int:
        assert self.process.proc is not None
        return self.process.proc.wait(timeout)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Control]:
    """One control service for the module, with POLICY applied."""
    control = Control(
        tmp_path_factory.mktemp("run") / "control", "--instance-ttl", "5s", "--svid-ttl", "10s"
    )
    control.start()
    control.apply(POLICY)
    yield control
    control.stop()


@pytest.fixture(scope="module")
def fleet(plane: Control, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """Every unmodified app under ``meshctl run``, started at once (tokens in parallel)."""
    workdir = tmp_path_factory.mktemp("fleet")
    grpc_pair = [sys.executable, "-m", "examples.unmodified.grpc_pair"]
    outside = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Outside)
    threading.Thread(target=outside.serve_forever, daemon=True).start()
    otlp = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{outside.server_address[1]}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    specs: dict[str, tuple[list[str], dict[str, str]]] = {
        "inventory": (
            uvicorn_cli("examples.unmodified.inventory"),
            {"LAUNCHER": "meshctl", **otlp},
        ),
        "orders": (
            [
                sys.executable,
                "-c",
                "import uvicorn; uvicorn.run('examples.unmodified.orders:app', "
                "host='127.0.0.1', port={port})",
            ],
            {
                "UPSTREAM": "inventory",
                "OUTSIDE_URL": f"http://127.0.0.1:{outside.server_address[1]}/",
                **otlp,
            },
        ),
        "edge": (
            uvicorn_cli("examples.unmodified.orders"),
            {"RUN_FLAGS": "--clients-only", "UPSTREAM": "inventory", "OUTSIDE_URL": "-"},
        ),
        "grpc-back": (grpc_pair, {}),
        "grpc-front": (grpc_pair, {}),
        "grpc-sync": ([sys.executable, "-m", "examples.unmodified.grpc_sync"], {}),
        "stock": (
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-w",
                "2",
                "-k",
                "uvicorn.workers.UvicornWorker",
                "--bind",
                "127.0.0.1:{port}",
                "examples.unmodified.inventory:app",
            ],
            {"FLAKY_FAILURES": "0"},
        ),
    }
    with ThreadPoolExecutor(len(specs)) as pool:
        runs = dict(
            zip(
                specs,
                pool.map(lambda n: Run(plane, workdir, n, specs[n][0], **specs[n][1]), specs),
                strict=True,
            )
        )
    for runner in runs.values():
        runner.start()
    try:
        try:
            for name, runner in runs.items():
                wait_for(lambda r=runner: _serving(plane, r), 40, f"{name} serving", 0.3)
        except AssertionError as exc:
            logs = "\n".join(f"--- {n}\n{r.process.output()[-3000:]}" for n, r in runs.items())
            raise AssertionError(f"{exc}\n{logs}") from None
        yield runs
    finally:
        stop_all([r.process for r in runs.values()])
        outside.shutdown()
        outside.server_close()


def _serving(plane: Control, runner: Run) -> bool:
    """Registered with its port; under --clients-only: listening (it registers no port)."""
    assert runner.process.alive(), runner.process.output()
    if "--clients-only" in runner.flags:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", runner.port)) == 0
    return any(i["service"] == runner.service and i["port"] for i in plane.instances())


@pytest.fixture(scope="module")
def caller(plane: Control, tmp_path_factory: pytest.TempPathFactory) -> Iterator[meshlib.Mesh]:
    """A library-mode workload (frontend) calling the fleet."""
    mesh = meshlib.Mesh(
        service="frontend",
        control_url=plane.url,
        token=plane.token("frontend"),
        data_dir=tmp_path_factory.mktemp("frontend"),
        start_timeout=20,
    )
    mesh.start()
    yield mesh
    mesh.close()


def uvicorn_cli(module: str) -> list[str]:
    return [sys.executable, "-m", "uvicorn", f"{module}:app", "--port", "{port}"]


class _Outside(http.server.BaseHTTPRequestHandler):
    """A host outside the mesh (GET), and an OTLP/HTTP receiver (POST /v1/traces)."""

    traces: list[bytes] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/v1/traces":
            _Outside.traces.append(body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        body = b"outside says hi"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def _wait_resolved(mesh: meshlib.Mesh, *services: str) -> None:
    for service in services:
        wait_for(lambda s=service: mesh.engine.resolve(s) is not None, 10, service, 0.05)


def test_fastapi_pair_over_httpx(fleet: dict[str, Run], caller: meshlib.Mesh) -> None:
    """orders (uvicorn.run) -> inventory (uvicorn CLI) by name: mTLS, deny, retries, trace."""
    _wait_resolved(caller, "orders", "inventory")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with caller.client(timeout=10) as web:
        reply = web.get(
            "http://orders/order/apple",
            headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
        )
        assert reply.status_code == 200, (reply.text, fleet["orders"].process.output())
        body = reply.json()
        # inventory saw an mTLS request from orders' SVID, in the caller's trace.
        assert body["status"] == 200, body
        assert body["body"]["scheme"] == "https"
        assert body["body"]["xfcc"] == f"By={TD}/inventory;URI={TD}/orders"
        assert body["body"]["traceparent"].split("-")[1] == trace_id
        # The spans both apps exported (OTLP, as in library mode): one trace, linked.
        spans = wait_for(lambda: _spans(trace_id, 3), 15, "3 exported spans of the trace")
        kinds = {(service, kind) for service, kind, _, _ in spans}
        assert kinds == {("orders", "SERVER"), ("orders", "CLIENT"), ("inventory", "SERVER")}
        by = {(service, kind): (span_id, parent) for service, kind, span_id, parent in spans}
        assert by["inventory", "SERVER"][1] == by["orders", "CLIENT"][0]
        assert by["orders", "CLIENT"][1] == by["orders", "SERVER"][0]
        assert by["orders", "SERVER"][1] == "00f067aa0ba902b7"
        # Retries: the route retries 5xx; inventory fails twice, the third try answers.
        flaky = web.get("http://orders/order/key1?flaky=1").json()
        assert flaky["status"] == 200 and flaky["body"] == {"asked": 3}, flaky
        # authz deny: frontend may not call inventory, exactly as in library mode.
        denied = web.get("http://inventory/item/apple")
        assert denied.status_code == 403
        assert denied.headers["x-mesh-flag"] == "AUTHZ_DENIED"
        assert "inventory-from-orders" in denied.text
        # The same through a sync httpx.Client.
        sync = web.get("http://orders/order-sync/fig").json()
        assert sync["status"] == 200 and sync["body"]["xfcc"].endswith(f"URI={TD}/orders")
        # A host that is not a mesh service goes out unchanged (plain HTTP here).
        out = web.get("http://orders/outside").json()
        assert out == {"status": 200, "body": "outside says hi"}


def _spans(trace_id: str, count: int) -> list[tuple[str, str, str, str]] | None:
    """(service, kind, span id, parent id) of the exported spans of *trace_id*."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    found = []
    for body in list(_Outside.traces):
        for resource in ExportTraceServiceRequest.FromString(body).resource_spans:
            attributes = {a.key: a.value.string_value for a in resource.resource.attributes}
            for scope in resource.scope_spans:
                for span in scope.spans:
                    if span.trace_id.hex() == trace_id and span.kind != Span.SPAN_KIND_INTERNAL:
                        kind = Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_")
                        service = attributes.get("service.name", "")
                        found.append((service, kind, span.span_id.hex(), span.parent_span_id.hex()))
    return found if len(found) >= count else None


def _served_certificate(caller: meshlib.Mesh, port: int) -> bytes:
    """The DER leaf a listener on 127.0.0.1:*port* presents to a mesh client."""
    context = caller.tls.client_context()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=None) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_the_served_svid_rotates_without_a_restart(
    fleet: dict[str, Run], caller: meshlib.Mesh
) -> None:
    """10 s SVIDs: the uvicorn under meshctl run presents a new leaf, same process, still 200."""
    inventory = fleet["inventory"]
    pid = inventory.process.proc.pid if inventory.process.proc else None
    first = _served_certificate(caller, inventory.port)
    wait_for(
        lambda: _served_certificate(caller, inventory.port) != first,
        20,
        "inventory presenting a renewed SVID",
        interval=0.5,
    )
    assert inventory.process.alive() and inventory.process.proc is not None
    assert inventory.process.proc.pid == pid
    with caller.client(timeout=10) as web:
        reply = web.get("http://orders/order/pear")
    assert reply.status_code == 200 and reply.json()["status"] == 200, reply.text


def test_clients_only_leaves_the_server_plain_and_meshes_the_client(
    fleet: dict[str, Run], plane: Control
) -> None:
    """--clients-only: plain HTTP in (an edge), the mesh out — as 'edge', whom inventory's
    AuthorizationPolicy does not name: refused AUTHZ_DENIED, as in library mode."""
    reply = httpx.get(f"http://127.0.0.1:{fleet['edge'].port}/order/apple", timeout=10)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["status"] == 403 and body["flag"] == "AUTHZ_DENIED", body
    assert body["body"]["peer"] == f"{TD}/edge", body
    assert [i["port"] for i in plane.instances() if i["service"] == "edge"] == [0]  # no endpoint


def test_plaintext_to_a_meshed_uvicorn_fails_the_handshake(fleet: dict[str, Run]) -> None:
    """The port uvicorn opened is mTLS only: a plain HTTP request gets no answer."""
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{fleet['inventory'].port}/item/apple", timeout=3)


def test_grpc_aio_pair(fleet: dict[str, Run], caller: meshlib.Mesh) -> None:
    """grpc-front -> grpc-back over grpc.aio.insecure_channel('grpc-back:50051'), meshed."""
    _wait_resolved(caller, "grpc-front", "grpc-back")
    with caller.grpc_channel("grpc-front") as channel:
        stub = pb_grpc.InventoryStub(channel)
        reply = stub.GetItemVia(pb.ViaRequest(service="grpc-back", item="apple"), timeout=10)
        assert reply.local.caller == f"{TD}/frontend"
        assert reply.upstream.caller == f"{TD}/grpc-front"
        assert reply.upstream.service == "grpc-back"
    with caller.grpc_channel("grpc-back") as channel:
        with pytest.raises(grpc.RpcError) as denied:
            pb_grpc.InventoryStub(channel).GetItem(pb.ItemRequest(item="apple"), timeout=10)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "grpc-back-from-grpc-front" in (denied.value.details() or "")


def test_sync_grpc_server_and_insecure_channel(fleet: dict[str, Run], caller: meshlib.Mesh) -> None:
    """grpc.server + grpc.insecure_channel('grpc-back:50051'): meshed like the aio pair."""
    _wait_resolved(caller, "grpc-sync", "grpc-back")
    with caller.grpc_channel("grpc-sync") as channel:
        stub = pb_grpc.InventoryStub(channel)
        reply = stub.GetItemVia(pb.ViaRequest(service="grpc-back", item="fig"), timeout=10)
    assert reply.local.caller == f"{TD}/frontend" and reply.local.service == "grpc-sync"
    assert reply.upstream.caller == f"{TD}/grpc-sync"


def test_gunicorn_workers_serve_one_registered_endpoint(
    fleet: dict[str, Run], plane: Control, caller: meshlib.Mesh
) -> None:
    """gunicorn -w 2 -k UvicornWorker: one endpoint (the pod's socket), both workers mTLS."""
    _wait_resolved(caller, "stock")
    stock = [i for i in plane.instances() if i["service"] == "stock"]
    with_port = [i for i in stock if i["port"]]
    assert [i["port"] for i in with_port] == [fleet["stock"].port], stock
    assert len(stock) == 3, stock  # the master's registration and one per worker, no port

    def ask() -> int:
        with caller.client(timeout=10) as web:  # a new connection each time
            reply = web.get("http://stock/item/pear")
        assert reply.status_code == 200, reply.text
        assert reply.json()["xfcc"] == f"By={TD}/stock;URI={TD}/frontend"
        return int(reply.json()["pid"])

    first = ask()
    # The kernel may hand every connection to one worker; kill it: the other worker (or
    # the master's replacement, starting its own mesh from the cached identity) answers.
    os.kill(first, signal.SIGKILL)
    other = wait_for(lambda: (pid := _try(ask)) not in (None, first) and pid, 20, "another worker")
    assert other != first
    stock_run = fleet["stock"]
    assert stock_run.process.alive() and stock_run.process.proc is not None
    # SIGTERM: gunicorn stops gracefully (exit 0 through the launcher), endpoint withdrawn.
    stock_run.process.proc.send_signal(signal.SIGTERM)
    try:
        code = stock_run.wait(20)
    except subprocess.TimeoutExpired:
        raise AssertionError(stock_run.process.output()[-3000:]) from None
    assert code == 0, stock_run.process.output()[-2000:]
    assert not [i for i in plane.instances() if i["service"] == "stock" and i["port"]]


def _try(ask: Callable[[], int]) -> int | None:
    try:
        return ask()
    except httpx.HTTPError:
        return None


# ---------------------------------------------------------------- failure modes, signals


def _run_to_end(plane: Control, workdir: Path, command: list[str], **env: str) -> tuple[int, str]:
    runner = Run(plane, workdir, env.pop("SERVICE", "lonely"), command, **env).start()
    code = runner.wait(30)
    return code, runner.process.output()


def test_missing_token_fails_before_the_app_starts(plane: Control, tmp_path: Path) -> None:
    code, out = _run_to_end(
        plane, tmp_path, [*uvicorn_cli("examples.unmodified.inventory")], MESH_TOKEN=""
    )
    assert code == 1, out
    assert "meshctl run: lonely: cannot join the mesh:" in out
    assert "no usable cached SVID and no join token: set MESH_TOKEN" in out, out
    assert "Uvicorn running" not in out and "Started server process" not in out


def test_unreachable_control_fails_within_the_start_timeout(plane: Control, tmp_path: Path) -> None:
    started = time.monotonic()
    code, out = _run_to_end(
        plane,
        tmp_path,
        uvicorn_cli("examples.unmodified.inventory"),
        MESH_CONTROL_URL=f"https://127.0.0.1:{free_port()}",
        MESH_START_TIMEOUT="2",
    )
    assert code == 1, out
    assert "meshctl run: lonely: cannot join the mesh: mesh did not become ready within 2s" in out
    assert time.monotonic() - started < 20
    assert "Started server process" not in out


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (
            [
                sys.executable,
                "-m",
                "uvicorn",
                "examples.unmodified.inventory:app",
                "--port",
                "{port}",
                "--ssl-certfile",
                "/nonexistent/cert.pem",
                "--ssl-keyfile",
                "/nonexistent/key.pem",
            ],
            "the app configures TLS itself (uvicorn ssl_certfile)",
        ),
        (
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-k",
                "uvicorn.workers.UvicornWorker",
                "--bind",
                "127.0.0.1:{port}",
                "--certfile",
                "/nonexistent/cert.pem",
                "--keyfile",
                "/nonexistent/key.pem",
                "examples.unmodified.inventory:app",
            ],
            "the app configures TLS itself (gunicorn --certfile/--keyfile)",
        ),
        (
            [
                sys.executable,
                "-c",
                "import grpc; from concurrent import futures; "
                "server = grpc.server(futures.ThreadPoolExecutor(1)); "
                "server.add_secure_port('127.0.0.1:0', None)",
            ],
            "the app configures TLS itself (grpc add_secure_port)",
        ),
        (
            [*uvicorn_cli("examples.unmodified.inventory"), "--workers", "2"],
            "uvicorn --workers 2 is not supported under meshctl run",
        ),
    ],
)
def test_what_cannot_be_meshed_is_refused_before_serving(
    plane: Control, tmp_path: Path, command: list[str], expected: str
) -> None:
    """The app's own TLS (uvicorn, gunicorn, gRPC) and uvicorn's spawned workers."""
    code, out = _run_to_end(plane, tmp_path, command)
    assert code == 1, out
    assert f"meshctl run: {expected}" in out, out
    assert "Uvicorn running" not in out and "Booting worker" not in out


def test_exit_code_and_signals_pass_through(plane: Control, tmp_path: Path) -> None:
    code, out = _run_to_end(plane, tmp_path, [sys.executable, "-c", "raise SystemExit(7)"])
    assert code == 7, out
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    runner = Run(plane, tmp_path, "signalled", [sys.executable, "-c", script]).start()
    wait_for(lambda: "ready" in runner.process.output(), 20, "child ready")
    assert runner.process.proc is not None
    runner.process.proc.send_signal(signal.SIGTERM)
    assert runner.wait(10) == 42, runner.process.output()
    # A launcher killed outright takes its child with it (SIGTERM, PR_SET_PDEATHSIG).
    script = script.replace("print('ready'", "print('ready', os.getpid()").replace(
        "import signal", "import os, signal"
    )
    orphan = Run(plane, tmp_path, "orphan", [sys.executable, "-c", script]).start()
    line = wait_for(
        lambda: next(
            (x for x in orphan.process.output().splitlines() if x.startswith("ready")), ""
        ),
        20,
        "child ready",
    )
    child = int(line.split()[1])
    assert orphan.process.proc is not None
    orphan.process.proc.kill()
    orphan.process.proc.wait(5)
    wait_for(lambda: _gone(child), 10, f"child {child} gone after its launcher's SIGKILL")


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status  # exited, not yet reaped by its new parent


def test_sigterm_withdraws_a_meshed_uvicorn_first(plane: Control, tmp_path: Path) -> None:
    runner = Run(
        plane, tmp_path, "leaving", uvicorn_cli("examples.unmodified.inventory"), LAUNCHER="meshctl"
    ).start()
    wait_for(lambda: _serving(plane, runner), 30, "leaving serving", interval=0.3)
    assert runner.process.proc is not None
    runner.process.proc.send_signal(signal.SIGTERM)
    code = runner.wait(15)
    out = runner.process.output()
    assert code == 128 + signal.SIGTERM, out  # uvicorn re-raises the signal it handled
    assert "Shutting down" in out and "Finished server process" in out
    assert not [i for i in plane.instances() if i["service"] == "leaving"]  # deregistered


def test_meshctl_global_flags_before_run_reach_the_child() -> None:
    """``meshctl --control URL run …``: the URL is the child's MESH_CONTROL_URL (bad labels
    still stop it before it starts)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    result = subprocess.run(
        [*MESHCTL, "--debug", "--control", "https://127.0.0.1:1", "run", "--service", "a",
         "--labels", "zone", "--", sys.executable, "-c", "pass"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "meshctl run: --labels: 'zone' is not key=value" in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["--service", "a", "--labels", "zone", "--", "python", "-c", "pass"],
            2,
            "--labels: 'zone' is not key=value",
        ),
        (["--", "python", "-c", "pass"], 2, "--service: required (or set MESH_SERVICE)"),
        (["--service", "orders"], 2, "no command to run"),
        (
            ["--service", "orders", "--", "/nonexistent/server"],
            127,
            "cannot start /nonexistent/server",
        ),
    ],
)
def test_launcher_bad_input(args: list[str], code: int, message: str) -> None:
    """Bad flags, no command, a command that cannot start: named, nothing started."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    result = subprocess.run(
        [sys.executable, "-m", "meshlib.run", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == code, result.stderr
    assert f"meshctl run: {message}" in result.stderr
