"""Micro-benchmark: where library mode spends its time on one outbound request.

``python -m benchmarks.micro [--quick]`` writes ``benchmarks/results/micro.{json,md}``.

Three parts, all with meshlib's real objects:

* **layers** — each per-request step of the mesh transport timed on its own, in process,
  with ``time.perf_counter_ns`` over many iterations, repeated: name resolution, route
  matching, the call's bookkeeping, balancer pick, breaker admission and recording,
  admission and budget, building the attempt (headers, deadline, trace context), the
  tenacity retry wrapper, telemetry (span + metrics);
* **TLS** — on real loopback sockets against a server in a child process: the cost of a
  full mTLS handshake (ECDSA P-256 SVIDs from the mesh CA, with the SPIFFE ID check) over a
  bare TCP connect, and the cost of one request/response over a kept-alive TLS connection
  over the same exchange in plaintext;
* **whole path** — sequential keep-alive GETs to a local uvicorn server (child process):
  bare httpx plaintext, bare httpx with hand-wired mTLS, meshlib's sync and async mesh
  transports without and with telemetry; plus a cProfile of the mesh path split by
  package.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import pstats
import select
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from benchmarks import document

ROOT = Path(__file__).resolve().parents[1]
TRUST_DOMAIN = "mesh.local"
REQUEST_BYTES = 300
RESPONSE_BYTES = 1024
SERVER_START_TIMEOUT = 30.0
PATH = "/api/items/42"

__all__ = ["Profile", "main", "run"]


@dataclass(frozen=True, slots=True)
class Profile:
    """Iteration counts; every loop is bounded by them (and by a time cap per item)."""

    iterations: int = 20_000
    repeats: int = 7
    item_time_cap: float = 6.0
    handshakes: int = 300
    echo_requests: int = 3_000
    path_requests: int = 2_000
    path_repeats: int = 5
    warmup: int = 200
    profile_requests: int = 2_000

    @classmethod
    def quick(cls) -> Profile:
        """The smoke-test profile (a few seconds)."""
        return cls(
            iterations=500,
            repeats=3,
            item_time_cap=0.5,
            handshakes=20,
            echo_requests=200,
            path_requests=100,
            path_repeats=2,
            warmup=20,
            profile_requests=100,
        )


def machine_info() -> dict[str, Any]:
    """What the figures were measured on, with the TLS and HTTP libraries' versions."""
    return document.machine_info(openssl=ssl.OPENSSL_VERSION, httpx=httpx.__version__)


# --------------------------------------------------------------------- timing


def _summary(samples_ns: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    quart = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
    return {
        "median_ns": round(statistics.median(ordered), 1),
        "min_ns": round(ordered[0], 1),
        "max_ns": round(ordered[-1], 1),
        "iqr_ns": round(quart[2] - quart[0], 1),
        "repeats": len(ordered),
    }


def time_sync(
    fn: Callable[[], object], profile: Profile, *, overhead: float = 0.0
) -> dict[str, Any]:
    """ns per call of *fn*: median (and spread) over repeats of a fixed number of calls."""
    n = profile.iterations
    for _ in range(min(n, 200)):
        fn()
    per_call: list[float] = []
    cap = time.perf_counter() + profile.item_time_cap
    for _ in range(profile.repeats):
        start = time.perf_counter_ns()
        for _ in range(n):
            fn()
        per_call.append((time.perf_counter_ns() - start) / n - overhead)
        if time.perf_counter() > cap:
            break
    return {**_summary(per_call), "iterations": n}


def time_async(
    fn: Callable[[], Awaitable[object]], profile: Profile, *, overhead: float = 0.0
) -> dict[str, Any]:
    """As :func:`time_sync` for a coroutine function, awaited in one event loop."""

    async def body() -> list[float]:
        n = profile.iterations
        for _ in range(min(n, 200)):
            await fn()
        out: list[float] = []
        cap = time.perf_counter() + profile.item_time_cap
        for _ in range(profile.repeats):
            start = time.perf_counter_ns()
            for _ in range(n):
                await fn()
            out.append((time.perf_counter_ns() - start) / n - overhead)
            if time.perf_counter() > cap:
                break
        return out

    return {**_summary(asyncio.run(body())), "iterations": profile.iterations}


# --------------------------------------------------------------------- identities


@dataclass(frozen=True, slots=True)
class Identities:
    """SVIDs issued by a real mesh CA, and the TLS contexts meshlib builds from them."""

    client: Any  # SVID
    server: Any  # SVID
    client_context: ssl.SSLContext
    files: dict[str, Path]


def make_identities(workdir: Path) -> Identities:
    """A mesh CA in *workdir*, SVIDs for ``frontend`` and ``backend``, PEM files for uvicorn."""
    from meshlib.identity.keys import (
        build_csr,
        generate_private_key,
        private_key_pem,
        write_private_file,
    )
    from meshlib.identity.spiffe import SpiffeId
    from meshlib.identity.svid import SVID
    from meshlib.identity.tls import build_client_context
    from meshlib_control.ca.authority import CertificateAuthority

    ca = CertificateAuthority.load_or_create(workdir / "ca", TRUST_DOMAIN)
    svids = {}
    for service in ("frontend", "backend"):
        key = generate_private_key()
        spiffe_id = SpiffeId.for_service(TRUST_DOMAIN, "default", service)
        issued = ca.sign_csr(build_csr(key, spiffe_id), entitled=spiffe_id, ttl=timedelta(hours=2))
        svids[service] = SVID.from_pem(issued.cert_pem, private_key_pem(key), ca.bundle_pem)
    tls_dir = workdir / "tls"
    tls_dir.mkdir(mode=0o700)
    server = svids["backend"]
    files = {"cert": tls_dir / "server.pem", "key": tls_dir / "server.key"}
    files["bundle"] = tls_dir / "bundle.pem"
    write_private_file(files["cert"], server.cert_chain_pem)
    write_private_file(files["key"], server.key_pem)
    write_private_file(files["bundle"], server.bundle_pem)
    client = svids["frontend"]
    return Identities(
        client, server, build_client_context(client, client.bundle_pem, tls_dir), files
    )


# --------------------------------------------------------------------- the server process


async def _asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b'{"item":"42","stock":7}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _echo_serve(listener: socket.socket, context: ssl.SSLContext | None) -> None:
    import threading

    def handle(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            stream: socket.socket = conn
            if context is not None:
                stream = context.wrap_socket(conn, server_side=True)
            reply = b"r" * RESPONSE_BYTES
            while True:
                need = REQUEST_BYTES
                while need:
                    chunk = stream.recv(need)
                    if not chunk:
                        return
                    need -= len(chunk)
                stream.sendall(reply)
        conn.close()

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


def serve_backend(tls_dir: Path) -> None:
    """Child-process entry: uvicorn (plain + mTLS) and TLS/plain echo servers; prints ports."""
    import uvicorn

    def bound() -> socket.socket:
        # proto=IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only
        # when the proto says TCP, and without it every response pays a delayed ACK (40 ms).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(512)
        return sock

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(tls_dir / "bundle.pem")
    server_ctx.load_cert_chain(tls_dir / "server.pem", tls_dir / "server.key")
    echo_plain, echo_tls = bound(), bound()
    _echo_serve(echo_plain, None)
    _echo_serve(echo_tls, server_ctx)
    http_plain, http_tls = bound(), bound()
    common: dict[str, Any] = {"log_level": "warning", "lifespan": "off", "access_log": False}
    plain = uvicorn.Server(uvicorn.Config(_asgi_app, **common))
    secure = uvicorn.Server(
        uvicorn.Config(
            _asgi_app,
            ssl_certfile=str(tls_dir / "server.pem"),
            ssl_keyfile=str(tls_dir / "server.key"),
            ssl_ca_certs=str(tls_dir / "bundle.pem"),
            ssl_cert_reqs=ssl.CERT_REQUIRED,
            **common,
        )
    )
    for server in (plain, secure):
        server.config.setup_event_loop = lambda: None  # type: ignore[method-assign]
    ports = [s.getsockname()[1] for s in (http_plain, http_tls, echo_plain, echo_tls)]

    async def main() -> None:
        tasks = [
            asyncio.create_task(plain.serve(sockets=[http_plain])),
            asyncio.create_task(secure.serve(sockets=[http_tls])),
        ]
        while not (plain.started and secure.started):
            await asyncio.sleep(0.02)
        print("ports", *ports, flush=True)
        # Exit when the parent closes our stdin (or dies).
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        plain.should_exit = secure.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


class Backend:
    """The server child process (``python -m benchmarks.micro --serve-backend DIR``)."""

    def __init__(self, tls_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.micro", "--serve-backend", str(tls_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            if self.proc.poll() is not None:
                raise RuntimeError("backend server exited before it was ready")
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                line += os.read(self.proc.stdout.fileno(), 256)
        parts = line.split()
        if len(parts) != 5 or parts[0] != b"ports":
            raise RuntimeError(f"backend server did not start: {line!r}")
        self.http_plain, self.http_tls, self.echo_plain, self.echo_tls = map(int, parts[1:])

    def stop(self) -> None:
        """Close its stdin (it exits), then terminate/kill if it lingers."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# --------------------------------------------------------------------- the mesh objects

LAYER_POLICY = """\
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {name: backend, namespace: default}
spec:
  service: backend
  loadBalancer: LEAST_REQUEST
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  routes:
  - name: canary
    match: {headers: [{name: x-canary, exact: "1"}]}
    backends: [{subset: v2}]
  - name: api
    match: {path: {prefix: /api/}, methods: [GET, HEAD]}
    backends: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]
    timeout: 2s
    retries: {attempts: 2, perTryTimeout: 500ms}
  outlierDetection: {consecutive5xx: 5, interval: 10s, baseEjectionTime: 30s}
  circuitBreaker: {consecutiveFailures: 5, resetTimeout: 30s}
"""


def make_engine(
    endpoints: Sequence[tuple[str, int, str]], policy: str | None, server_id: str
) -> Any:
    """A compiled PolicyEngine for caller ``frontend`` with one destination ``backend``."""
    from meshlib.policy.decode import decode_documents
    from meshlib.policy.engine import PolicyEngine
    from meshlib.policy.snapshot import (
        Endpoint,
        InboundPolicy,
        ServiceEntry,
        Snapshot,
        compute_version,
    )

    eps = tuple(
        Endpoint(f"ep{i:014d}", host, port, (("version", version),), "library", server_id)
        for i, (host, port, version) in enumerate(endpoints)
    )
    resource = decode_documents(policy)[0] if policy else None
    entry = ServiceEntry("backend", "default", server_id, eps, resource)
    draft = Snapshot("", TRUST_DOMAIN, "frontend", "default", InboundPolicy(), (entry,))
    snap = Snapshot(
        compute_version(draft), TRUST_DOMAIN, "frontend", "default", InboundPolicy(), (entry,)
    )
    return PolicyEngine.compile(snap)


class _DiscardExporter:
    """A span exporter that drops spans (the cost of producing them, not shipping them)."""

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def sdk_tracer_provider() -> Any:
    """An SDK TracerProvider with a batch processor over a discarding exporter."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_DiscardExporter()))  # type: ignore[arg-type]
    return provider


# --------------------------------------------------------------------- part 1: layers


def measure_layers(profile: Profile) -> list[dict[str, Any]]:
    """ns per request of each in-process layer of the mesh transport."""
    from opentelemetry import trace

    from meshlib.integrations.httpx_mesh import MeshTransport, _Call
    from meshlib.resilience.retry import Outcome, build_retrying
    from meshlib.telemetry.metrics import MeshTelemetry
    from meshlib.traffic.balancers import LeastRequest, StatsRegistry
    from meshlib.traffic.calls import RuntimeRegistry

    server_id = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/backend"
    engine = make_engine(
        [("10.0.0.1", 8443, "v1"), ("10.0.0.2", 8443, "v1"), ("10.0.0.3", 8443, "v2")],
        LAYER_POLICY,
        server_id,
    )
    service = engine.resolve("backend")
    request = httpx.Request("GET", f"http://backend{PATH}", headers={"accept": "*/*"})
    headers = request.headers
    stats = StatsRegistry()
    runtimes = RuntimeRegistry(stats, zone=None)
    runtime = runtimes.get(service)
    plan = service.route("GET", PATH, headers)
    assert plan.name == "api", plan.name
    endpoint = plan.backends[0].endpoints[0]
    authority = endpoint.authority
    balancer = LeastRequest(stats)
    v1 = plan.backends[0].endpoints
    ok = Outcome.from_status(200)
    response = httpx.Response(200, request=request)
    clock = time.monotonic

    rows: list[dict[str, Any]] = []
    empty = time_sync(lambda: None, profile)["median_ns"]

    def add(layer: str, what: str, stats_: dict[str, Any], entry: str) -> None:
        rows.append({"layer": layer, "what": what, "entry_point": entry, **stats_})

    def sync(fn: Callable[[], object]) -> dict[str, Any]:
        return time_sync(fn, profile, overhead=empty)

    add("routing", "resolve host", sync(lambda: engine.resolve("backend")), "PolicyEngine.resolve")
    add(
        "routing",
        "match route (2 routes, 2nd matches)",
        sync(lambda: service.route("GET", PATH, headers)),
        "CompiledService.route",
    )
    add("routing", "runtime lookup", sync(lambda: runtimes.get(service)), "RuntimeRegistry.get")
    add(
        "call",
        "per-call bookkeeping (deadline, retry safety, fault)",
        sync(lambda: _Call(service, runtime, plan, request, clock)),
        "httpx_mesh._Call",
    )
    add(
        "balancer",
        "P2C least-request pick (2 endpoints)",
        sync(lambda: balancer.pick(v1)),
        "LeastRequest.pick",
    )
    add(
        "balancer",
        "choose endpoint (weights, outliers, breakers, pick)",
        sync(lambda: runtime.choose(plan, 0.5, frozenset())),
        "ServiceRuntime.choose",
    )

    def stats_round() -> None:
        s = stats.get(authority)
        s.finish(s.start(), True)

    add("balancer", "endpoint load stats (start + finish)", sync(stats_round), "EndpointStats")
    add(
        "breaker",
        "admission check (closed)",
        sync(lambda: runtime.breakers.allow(authority)),
        "BreakerRegistry.allow",
    )
    add(
        "breaker",
        "record outcome (breaker + outlier detector)",
        sync(lambda: runtime.record(endpoint, ok)),
        "ServiceRuntime.record",
    )

    def admission() -> None:
        runtime.admit()
        runtime.budget.record_request()
        runtime.release()

    add("admission", "pool admission + budget deposit", sync(admission), "ServiceRuntime.admit")

    call_ns = rows[3]["median_ns"]
    choose_ns = rows[5]["median_ns"]
    add(
        "call",
        "build the attempt (headers copy, deadline header, trace context, request)",
        time_sync(
            lambda: _Call(service, runtime, plan, request, clock).prepare_attempt(),
            profile,
            overhead=empty + call_ns + choose_ns,  # it calls ServiceRuntime.choose
        ),
        "_Call.prepare_attempt",
    )

    def direct() -> httpx.Response:
        return response

    def retried() -> httpx.Response:
        call = _Call(service, runtime, plan, request, clock)
        retrying = build_retrying(
            plan.retries,
            budget=runtime.budget,
            should_retry=call.retry_outcome,
            deadline=call.deadline,
            on_budget_exhausted=call.on_budget_exhausted,
            async_=False,
        )
        result: httpx.Response = retrying(direct)
        return result

    add(
        "retry",
        "retry wrapper, sync (build tenacity Retrying + one successful try)",
        time_sync(retried, profile, overhead=empty + call_ns),
        "build_retrying(async_=False)",
    )

    async def adirect() -> httpx.Response:
        return response

    async def aretried() -> httpx.Response:
        call = _Call(service, runtime, plan, request, clock)
        retrying = build_retrying(
            plan.retries,
            budget=runtime.budget,
            should_retry=call.retry_outcome,
            deadline=call.deadline,
            on_budget_exhausted=call.on_budget_exhausted,
            async_=True,
        )
        result: httpx.Response = await retrying(adirect)
        return result

    async_empty = time_async(adirect, profile)["median_ns"]
    add(
        "retry",
        "retry wrapper, async (build tenacity AsyncRetrying + one successful try)",
        time_async(aretried, profile, overhead=async_empty + call_ns),
        "build_retrying(async_=True)",
    )

    # Telemetry: the transport's own _start/_finish with and without it.
    sdk = sdk_tracer_provider()
    telemetry_sdk = MeshTelemetry(service="frontend", namespace="default", tracer_provider=sdk)
    telemetry_api = MeshTelemetry(
        service="frontend", namespace="default", tracer_provider=trace.NoOpTracerProvider()
    )
    try:
        transports = {
            name: MeshTransport(
                engine=lambda: engine,
                tls=lambda: None,
                stats=stats,
                runtimes=runtimes,
                telemetry=tel,
            )
            for name, tel in (("off", None), ("noop", telemetry_api), ("sdk", telemetry_sdk))
        }

        def start_finish(transport: MeshTransport) -> Callable[[], None]:
            def fn() -> None:
                call = transport._start(request)
                assert call is not None
                transport._finish(call, response, None)

            return fn

        base = sync(start_finish(transports["off"]))
        base_ns = base["median_ns"]
        add(
            "call",
            "transport start + finish, telemetry off (resolve, route, bookkeeping)",
            base,
            "MeshTransport._start/_finish",
        )
        add(
            "telemetry",
            "span (no SDK: API no-op) + metrics record",
            time_sync(start_finish(transports["noop"]), profile, overhead=empty + base_ns),
            "MeshTelemetry, NoOpTracerProvider",
        )
        add(
            "telemetry",
            "span (SDK, batch processor) + metrics record",
            time_sync(start_finish(transports["sdk"]), profile, overhead=empty + base_ns),
            "MeshTelemetry, SDK TracerProvider",
        )

        def metrics_only() -> None:
            telemetry_sdk.http_client_done(
                service="backend.default",
                method="GET",
                status=200,
                error=None,
                duration=0.0004,
                attempts=1,
                flag=None,
                route="api",
                path=PATH,
                trace_id=None,
            )

        add(
            "telemetry",
            "metrics record alone (duration histogram)",
            sync(metrics_only),
            "MeshTelemetry.http_client_done",
        )
        tracer = sdk.get_tracer("meshlib")

        def span_only() -> None:
            tracer.start_span("GET", kind=trace.SpanKind.CLIENT).end()

        add("telemetry", "SDK span alone (start + end)", sync(span_only), "Tracer.start_span")
    finally:
        telemetry_sdk.shutdown()
        telemetry_api.shutdown()
        sdk.shutdown()
    return rows


# --------------------------------------------------------------------- part 2: TLS


def _recv_exact(sock: socket.socket, size: int) -> None:
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise ConnectionError("server closed the connection")
        size -= len(chunk)


def measure_tls(profile: Profile, backend: Backend, ids: Identities) -> dict[str, Any]:
    """Handshake cost and per-request record cost of mTLS, on loopback sockets."""
    from meshlib.integrations.httpx import check_peer

    server_id = str(ids.server.spiffe_id)
    ctx = ids.client_context

    def connect(port: int) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def timed_connects(tls: bool) -> list[float]:
        out: list[float] = []
        deadline = time.perf_counter() + profile.item_time_cap * 3
        for _ in range(profile.handshakes):
            start = time.perf_counter_ns()
            sock: socket.socket
            if tls:
                raw = connect(backend.echo_tls)
                sock = ctx.wrap_socket(raw, server_hostname="backend.default.svc.mesh.local")
                check_peer(sock, server_id, "echo")
            else:
                sock = connect(backend.echo_plain)
            out.append(time.perf_counter_ns() - start)
            sock.close()
            if time.perf_counter() > deadline:
                break
        return out

    tcp = timed_connects(False)
    mtls = timed_connects(True)

    def round_trips(tls: bool) -> list[float]:
        sock: socket.socket
        if tls:
            sock = ctx.wrap_socket(connect(backend.echo_tls), server_hostname="backend")
        else:
            sock = connect(backend.echo_plain)
        payload = b"q" * REQUEST_BYTES
        out: list[float] = []
        try:
            for _ in range(profile.warmup):
                sock.sendall(payload)
                _recv_exact(sock, RESPONSE_BYTES)
            deadline = time.perf_counter() + profile.item_time_cap * 3
            for _ in range(profile.echo_requests):
                start = time.perf_counter_ns()
                sock.sendall(payload)
                _recv_exact(sock, RESPONSE_BYTES)
                out.append(time.perf_counter_ns() - start)
                if time.perf_counter() > deadline:
                    break
        finally:
            sock.close()
        return out

    plain_rt = round_trips(False)
    tls_rt = round_trips(True)
    med = statistics.median
    return {
        "request_bytes": REQUEST_BYTES,
        "response_bytes": RESPONSE_BYTES,
        "tcp_connect": _lat_us(tcp),
        "tcp_connect_mtls_handshake": _lat_us(mtls),
        "handshake_added_us": round((med(mtls) - med(tcp)) / 1000, 1),
        "plaintext_round_trip": _lat_us(plain_rt),
        "tls_round_trip": _lat_us(tls_rt),
        "tls_added_per_request_us": round((med(tls_rt) - med(plain_rt)) / 1000, 1),
        "tls_version": "TLSv1.3 (default) with ECDSA P-256 SVIDs, client certificate required",
    }


def _lat_us(samples_ns: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    n = len(ordered)
    return {
        "count": n,
        "p50_us": round(ordered[n // 2] / 1000, 1),
        "p99_us": round(ordered[min(n - 1, int(n * 0.99))] / 1000, 1),
        "mean_us": round(statistics.fmean(ordered) / 1000, 1),
    }


# --------------------------------------------------------------------- part 3: whole path


def _path_clients(
    backend: Backend, ids: Identities, telemetry_sdk: Any
) -> dict[str, tuple[str, Callable[[], Any], bool]]:
    """name → (url, client factory, is_async)."""
    from meshlib.integrations.httpx_mesh import AsyncMeshTransport, MeshTransport
    from meshlib.traffic.balancers import StatsRegistry

    server_id = str(ids.server.spiffe_id)
    engine = make_engine([("127.0.0.1", backend.http_tls, "v1")], None, server_id)
    ctx = ids.client_context
    plain_url = f"http://127.0.0.1:{backend.http_plain}{PATH}"
    tls_url = f"https://127.0.0.1:{backend.http_tls}{PATH}"
    mesh_url = f"http://backend{PATH}"

    def mesh(is_async: bool, telemetry: Any) -> Callable[[], Any]:
        def make() -> Any:
            kwargs: dict[str, Any] = {
                "engine": lambda: engine,
                "tls": lambda: ctx,
                "stats": StatsRegistry(),
                "telemetry": telemetry,
            }
            if is_async:
                return httpx.AsyncClient(transport=AsyncMeshTransport(**kwargs))
            return httpx.Client(transport=MeshTransport(**kwargs))

        return make

    return {
        "httpx plaintext (floor)": (plain_url, httpx.Client, False),
        "httpx hand-wired mTLS": (tls_url, lambda: httpx.Client(verify=ctx), False),
        "meshlib sync, telemetry off": (mesh_url, mesh(False, None), False),
        "meshlib sync, telemetry on": (mesh_url, mesh(False, telemetry_sdk), False),
        "httpx async plaintext": (plain_url, httpx.AsyncClient, True),
        "httpx async hand-wired mTLS": (tls_url, lambda: httpx.AsyncClient(verify=ctx), True),
        "meshlib async, telemetry off": (mesh_url, mesh(True, None), True),
        "meshlib async, telemetry on": (mesh_url, mesh(True, telemetry_sdk), True),
    }


def _sync_series(url: str, make: Callable[[], Any], profile: Profile) -> list[float]:
    out: list[float] = []
    with make() as client:
        for _ in range(profile.warmup):
            client.get(url).raise_for_status()
        deadline = time.perf_counter() + profile.item_time_cap * 2
        for _ in range(profile.path_requests):
            start = time.perf_counter_ns()
            response = client.get(url)
            out.append(time.perf_counter_ns() - start)
            if response.status_code != 200:
                raise RuntimeError(f"{url}: {response.status_code}")
            if time.perf_counter() > deadline:
                break
    return out


def _async_series(url: str, make: Callable[[], Any], profile: Profile) -> list[float]:
    async def body() -> list[float]:
        out: list[float] = []
        async with make() as client:
            for _ in range(profile.warmup):
                (await client.get(url)).raise_for_status()
            deadline = time.perf_counter() + profile.item_time_cap * 2
            for _ in range(profile.path_requests):
                start = time.perf_counter_ns()
                response = await client.get(url)
                out.append(time.perf_counter_ns() - start)
                if response.status_code != 200:
                    raise RuntimeError(f"{url}: {response.status_code}")
                if time.perf_counter() > deadline:
                    break
        return out

    return asyncio.run(body())


def measure_path(profile: Profile, backend: Backend, ids: Identities) -> dict[str, Any]:
    """Sequential keep-alive GETs: per-request latency of each client, interleaved repeats."""
    from meshlib.telemetry.metrics import MeshTelemetry

    sdk = sdk_tracer_provider()
    telemetry = MeshTelemetry(service="frontend", namespace="default", tracer_provider=sdk)
    try:
        clients = _path_clients(backend, ids, telemetry)
        samples: dict[str, list[float]] = {name: [] for name in clients}
        means: dict[str, list[float]] = {name: [] for name in clients}
        for _ in range(profile.path_repeats):  # interleaved, so drift hits every series
            for name, (url, make, is_async) in clients.items():
                series = (_async_series if is_async else _sync_series)(url, make, profile)
                samples[name].extend(series)
                means[name].append(statistics.fmean(series))
        rows: list[dict[str, Any]] = []
        for name in clients:
            lat = _lat_us(samples[name])
            spread = [m / 1000 for m in means[name]]
            rows.append(
                {
                    "client": name,
                    **lat,
                    "repeat_means_us": [round(x, 1) for x in spread],
                }
            )
        by = {r["client"]: r for r in rows}
        for r in rows:
            floor = "httpx async plaintext" if "async" in r["client"] else "httpx plaintext (floor)"
            mtls = (
                "httpx async hand-wired mTLS" if "async" in r["client"] else "httpx hand-wired mTLS"
            )
            r["over_plaintext_p50_us"] = round(r["p50_us"] - by[floor]["p50_us"], 1)
            r["over_mtls_p50_us"] = round(r["p50_us"] - by[mtls]["p50_us"], 1)
            r["over_mtls_p99_us"] = round(r["p99_us"] - by[mtls]["p99_us"], 1)
        profile_split = _profile_mesh_path(profile, clients["meshlib sync, telemetry on"])
        return {
            "requests_per_series": profile.path_requests,
            "rows": rows,
            "profile": profile_split,
        }
    finally:
        telemetry.shutdown()
        sdk.shutdown()


PACKAGES = (
    ("meshlib", ("meshlib/",)),
    ("opentelemetry", ("opentelemetry/",)),
    ("tenacity", ("tenacity/",)),
    ("httpx", ("httpx/",)),
    ("httpcore", ("httpcore/",)),
    ("h11", ("h11/",)),
)


def _package_of(filename: str) -> str:
    if filename.startswith("~") or filename.startswith("<"):
        return "builtins (ssl, socket, select, …)"
    for name, markers in PACKAGES:
        if any(m in filename for m in markers):
            return name
    return "other Python"


def _profile_mesh_path(
    profile: Profile, client: tuple[str, Callable[[], Any], bool]
) -> dict[str, Any]:
    """cProfile the sync mesh path (telemetry on); self time by package, top functions."""
    url, make, _ = client
    profiler = cProfile.Profile()
    with make() as http:
        for _ in range(profile.warmup):
            http.get(url)
        profiler.enable()
        for _ in range(profile.profile_requests):
            http.get(url)
        profiler.disable()
    stats = pstats.Stats(profiler)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    by_package: dict[str, float] = {}
    functions: list[tuple[float, float, str]] = []
    total = 0.0
    for (filename, line, name), (_cc, _nc, tottime, cumtime, _callers) in raw.items():
        package = _package_of(filename)
        by_package[package] = by_package.get(package, 0.0) + tottime
        total += tottime
        if package == "meshlib":
            short = filename.split("meshlib/", 1)[-1]
            functions.append((cumtime, tottime, f"meshlib/{short}:{line} {name}"))
    functions.sort(reverse=True)
    n = profile.profile_requests
    return {
        "requests": n,
        "note": "self time under cProfile, which inflates many small calls; shares, not µs",
        "self_time_share": {
            k: round(v / total, 3) for k, v in sorted(by_package.items(), key=lambda kv: -kv[1])
        },
        "top_meshlib_cumulative_us_per_request": [
            {
                "function": f,
                "cumulative_us": round(c / n * 1e6, 1),
                "self_us": round(t / n * 1e6, 1),
            }
            for c, t, f in functions[:12]
        ],
    }


# --------------------------------------------------------------------- report


SYNC_PATH = (
    "MeshTransport._start/_finish",
    "ServiceRuntime.choose",
    "EndpointStats",
    "ServiceRuntime.admit",
    "_Call.prepare_attempt",
    "ServiceRuntime.record",
)


def layer_sums(layers: Sequence[dict[str, Any]]) -> dict[str, float]:
    """ns per GET summed over the layers each variant of the call path goes through."""
    ns = {r["entry_point"]: r["median_ns"] for r in layers}
    base = sum(ns[k] for k in SYNC_PATH)
    telemetry = ns["MeshTelemetry, SDK TracerProvider"]
    # The first try runs without a retrier (httpx_mesh builds one only when a retry is
    # due), so a GET that succeeds at once pays no retry wrapper; a retried one pays it once.
    return {
        "telemetry off": base,
        "telemetry on": base + telemetry,
        "retried once, sync (adds the wrapper)": base + ns["build_retrying(async_=False)"],
        "retried once, async (adds the wrapper)": base + ns["build_retrying(async_=True)"],
    }


def render_markdown(result: dict[str, Any]) -> str:
    """The results as Markdown, readable on its own (docs/benchmarks.md includes it)."""
    m = result["machine"]
    lines = [
        "# Micro-benchmark: where library mode spends its time per request",
        "",
        document.measured_line(
            result,
            command="python -m benchmarks.micro",
            software=f"{m['openssl']}, httpx {m['httpx']}",
        ),
        "",
        "## Per-layer cost, in process",
        "",
        "Each row times one per-request entry point of meshlib's mesh transport on the real "
        "objects, compiled from a TrafficPolicy with two routes (the second matches), two "
        "subsets, retries, outlier detection and a circuit breaker, three endpoints. "
        "`time.perf_counter_ns` over "
        f"{result['layers'][0]['iterations']:,} calls, repeated; the median per call and the "
        "range over repeats, with the cost of an empty call (and, where noted, of the step "
        "it builds on) subtracted. ns = nanoseconds; 1 µs = 1,000 ns.",
        "",
        "| layer | what | entry point | median ns/op | min - max over repeats |",
        "|---|---|---|---:|---:|",
    ]
    for r in result["layers"]:
        lines.append(
            f"| {r['layer']} | {r['what']} | `{r['entry_point']}` | {r['median_ns']:,.0f} | "
            f"{r['min_ns']:,.0f} - {r['max_ns']:,.0f} |"
        )
    sums = layer_sums(result["layers"])
    lines += [
        "",
        "Summed over the steps one GET goes through (transport start + finish, choose, "
        "load stats, admission, build the attempt, record outcome; plus the SDK span and "
        "metrics when telemetry is on; plus the retry wrapper for a call that is retried): "
        + "; ".join(f"{k} **{v / 1000:,.1f} µs**" for k, v in sums.items())
        + ". The whole-path table below measures the same thing end to end (it also "
        "includes httpx's per-request work that the mesh transport repeats, such as "
        "building the attempt's request object and mapping the response).",
    ]
    t = result["tls"]
    lines += [
        "",
        "Notes: *build the attempt* excludes the per-call bookkeeping and the endpoint "
        "choice it calls, the *retry wrapper* rows the bookkeeping; the *telemetry* span "
        "rows are the transport's `_start` + `_finish` with telemetry minus the same "
        "without it. The mesh transport runs the first try without a retrier and builds "
        "the tenacity retrier only when a retry is due (it replays the first result), so "
        "the *retry wrapper* rows are what a retried call pays, not every call.",
        "",
        "## TLS on loopback sockets",
        "",
        "Client in this process, server in a child process (blocking sockets, one thread per "
        "connection); the mesh's own client context and SVIDs (ECDSA P-256, issued by a "
        "mesh CA), client certificate required, SPIFFE ID checked after the handshake as "
        f"the transport does. A request is {t['request_bytes']} bytes, a response "
        f"{t['response_bytes']} bytes.",
        "",
        "| measurement | samples | p50 | p99 | mean |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label in (
        ("tcp_connect", "TCP connect"),
        ("tcp_connect_mtls_handshake", "TCP connect + mTLS handshake + SPIFFE check"),
        ("plaintext_round_trip", "request/response, plaintext keep-alive"),
        ("tls_round_trip", "request/response, TLS keep-alive"),
    ):
        r = t[key]
        lines.append(
            f"| {label} | {r['count']:,} | {r['p50_us']:,.1f} µs | {r['p99_us']:,.1f} µs | "
            f"{r['mean_us']:,.1f} µs |"
        )
    lines += [
        "",
        f"A new mTLS connection costs **{t['handshake_added_us']:,.1f} µs** more than a TCP "
        f"connect (both sides' work); once open, TLS adds **{t['tls_added_per_request_us']:,.1f}"
        " µs** per request/response (encrypting and decrypting both directions, both sides). "
        "meshlib pools connections per destination, so the handshake is paid once per "
        "connection, not per request.",
        "",
        "## Whole client path against a local uvicorn server",
        "",
        "Sequential GETs over one kept-alive connection to a minimal ASGI app under uvicorn "
        "(child process), with plaintext and mTLS listeners. The series run interleaved, "
        f"{result['profile_settings']['path_repeats']} times each "
        f"({result['path']['requests_per_series']:,} requests per run); the percentiles are "
        "over every request. The meshlib clients are `httpx.Client`/`AsyncClient` over "
        "`MeshTransport`/`AsyncMeshTransport` (what `mesh.client()` builds) with a compiled "
        "snapshot naming the server as the one endpoint of `backend`, with no TrafficPolicy: "
        "the implicit default route (least-request, up to 2 retries; no retrier is built "
        "unless a try fails). *Telemetry on* is an SDK TracerProvider with a batch processor "
        "(spans dropped by the exporter) plus meshlib's metrics; *off* passes no "
        "`MeshTelemetry` at all (a `Mesh` always passes one, so its clients record metrics).",
        "",
        "| client | p50 | p99 | mean | over plaintext p50 | over mTLS p50 | over mTLS p99 "
        "| mean of each run |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["path"]["rows"]:
        lines.append(
            f"| {r['client']} | {r['p50_us']:,.1f} µs | {r['p99_us']:,.1f} µs | "
            f"{r['mean_us']:,.1f} µs | {r['over_plaintext_p50_us']:+,.1f} µs | "
            f"{r['over_mtls_p50_us']:+,.1f} µs | {r['over_mtls_p99_us']:+,.1f} µs | "
            f"{', '.join(f'{x:,.0f}' for x in r['repeat_means_us'])} |"
        )
    p = result["path"]["profile"]
    lines += [
        "",
        f"### Profile of the mesh path (sync, telemetry on, {p['requests']:,} requests)",
        "",
        "Self time by package under cProfile (it inflates code made of many small calls, "
        "so read these as shares):",
        "",
        "| package | share of self time |",
        "|---|---:|",
    ]
    for package, share in p["self_time_share"].items():
        lines.append(f"| {package} | {share * 100:.1f} % |")
    lines += [
        "",
        "meshlib functions with the largest cumulative time per request (under the profiler):",
        "",
        "| function | cumulative µs/request | self µs/request |",
        "|---|---:|---:|",
    ]
    for f in p["top_meshlib_cumulative_us_per_request"]:
        lines.append(f"| `{f['function']}` | {f['cumulative_us']:,.1f} | {f['self_us']:,.1f} |")
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------- entry point


def run(profile: Profile, *, quick: bool) -> dict[str, Any]:
    """Run every part; returns the result document."""
    workdir = Path(tempfile.mkdtemp(prefix="meshlib-micro-"))
    os.chmod(workdir, 0o700)
    backend: Backend | None = None
    started = time.perf_counter()
    try:
        result = document.new_document("micro", profile, quick=quick, machine=machine_info())
        result["layers"] = measure_layers(profile)
        ids = make_identities(workdir)
        backend = Backend(workdir / "tls")
        result["tls"] = measure_tls(profile, backend, ids)
        result["path"] = measure_path(profile, backend, ids)
        document.finish_document(result, started)
        return result
    finally:
        if backend is not None:
            backend.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def plot(result: dict[str, Any], path: Path) -> bool:
    """Per-layer medians and whole-path p50s as a PNG; False without matplotlib."""
    plt = document.pyplot()
    if plt is None:
        return False
    layers = result["layers"]
    rows = result["path"]["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5), width_ratios=(1.3, 1))
    labels = [f"{r['layer']}: {r['what'][:48]}" for r in layers]
    left.barh(labels, [r["median_ns"] / 1000 for r in layers], color="tab:blue")
    left.invert_yaxis()
    left.set_xlabel("µs per request (median)")
    left.set_title("In-process cost of each mesh layer")
    left.tick_params(axis="y", labelsize=7)
    names = [r["client"] for r in rows]
    ys = list(range(len(rows)))
    right.barh([y - 0.2 for y in ys], [r["p50_us"] for r in rows], 0.4, label="p50")
    right.barh([y + 0.2 for y in ys], [r["p99_us"] for r in rows], 0.4, label="p99")
    right.set_yticks(ys)
    right.set_yticklabels(names)
    right.invert_yaxis()
    right.legend()
    right.set_xlabel("µs per request (sequential, keep-alive)")
    right.set_title("Whole client path, local uvicorn server")
    right.tick_params(axis="y", labelsize=8)
    document.save_figure(plt, fig, path)
    return True


def write_results(result: dict[str, Any], out_dir: Path, stem: str = "micro") -> None:
    """Write ``<stem>.json``, ``<stem>.md`` and (with matplotlib) ``<stem>.png``."""
    document.write_files(result, out_dir, stem, render=render_markdown, plot=plot)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.micro [--quick] [--out DIR]``."""
    return document.main(
        argv,
        prog="python -m benchmarks.micro",
        quick_help="the smoke-test profile (~10 s)",
        options=_options,
        execute=_execute,
        write=write_results,
        render=render_markdown,
    )


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--serve-backend", type=Path, help=argparse.SUPPRESS)


def _execute(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.serve_backend is not None:  # the child process Backend starts: no results
        serve_backend(args.serve_backend)
        return None
    return run(Profile.quick() if args.quick else Profile(), quick=args.quick)


if __name__ == "__main__":
    raise SystemExit(main())
