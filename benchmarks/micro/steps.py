"""Part 5: interpreter steps per request — a figure the machine's load cannot move.

Timings on a shared 2-core VM drift with whatever else runs; the number of Python bytecode
instructions a request executes does not. ``sys.settrace`` with ``f_trace_opcodes`` counts
them (per function) while a series of sequential keep-alive requests runs:

* **client**: httpx's own client with hand-wired mTLS against the mesh's client (metrics
  on, tracing off: what a ``Mesh`` gives), sync and async, to the uvicorn child process of
  :mod:`benchmarks.micro.backend`;
* **server**: a minimal FastAPI app under plain uvicorn with TLS against the same app under
  ``meshlib.serve`` (:class:`meshlib.MeshServer`, a test mesh's SVID and an
  AuthorizationPolicy admitting the caller), both in a thread of this process, called by a
  child process over mTLS; only the server thread is counted.

C code (``ssl``, the kernel, httptools) is not counted: these are the Python steps the mesh
adds, the part of its cost that lives in the interpreter. The tracer slows the run, never
the count.
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from benchmarks.micro.backend import Backend
from benchmarks.micro.identities import Identities
from benchmarks.micro.mesh import make_engine
from benchmarks.micro.settings import PATH, ROOT, SERVER_START_TIMEOUT, Profile

__all__ = ["measure_steps"]

TOP = 12  # functions listed per comparison


class _Counter:
    """Counts opcodes per (file, function) while :attr:`on` is set, in traced threads."""

    def __init__(self) -> None:
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.on = False

    def trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        if not self.on:
            return None
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        counts = self.counts

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "opcode":
                code = frame.f_code
                counts[code.co_filename, code.co_name] += 1
            return local

        return local

    def per_request(self, n: int) -> dict[str, float]:
        out: dict[str, float] = collections.defaultdict(float)
        for (filename, name), count in self.counts.items():
            out[f"{_short(filename)}:{name}"] += count / n
        return out


def _short(filename: str) -> str:
    """``httpx/_models.py``, ``meshlib/mesh.py``, ``asyncio/events.py``: no install prefix."""
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1]
    stdlib = re.match(r".*/lib/python3\.\d+/(.*)", filename)
    if stdlib:
        return stdlib.group(1)
    return str(Path(filename).relative_to(ROOT)) if filename.startswith(str(ROOT)) else filename


def _compare(name: str, base: dict[str, float], other: dict[str, float]) -> dict[str, Any]:
    keys = set(base) | set(other)
    diff = {k: other.get(k, 0.0) - base.get(k, 0.0) for k in keys}
    top = sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:TOP]
    baseline, mesh = round(sum(base.values())), round(sum(other.values()))
    return {
        "name": name,
        "baseline_steps": baseline,
        "mesh_steps": mesh,
        "added_steps": mesh - baseline,
        "top": [{"function": k, "steps": round(v, 1)} for k, v in top],
    }


# --------------------------------------------------------------------- client side


def _client_steps(url: str, make: Callable[[], Any], is_async: bool, n: int) -> dict[str, float]:
    counter = _Counter()

    def series_sync() -> None:
        with make() as client:
            for _ in range(20):
                client.get(url).raise_for_status()
            counter.on = True
            sys.settrace(counter.trace)
            try:
                for _ in range(n):
                    client.get(url)
            finally:
                sys.settrace(None)
                counter.on = False

    async def series_async() -> None:
        async with make() as client:
            for _ in range(20):
                (await client.get(url)).raise_for_status()
            counter.on = True
            sys.settrace(counter.trace)
            try:
                for _ in range(n):
                    await client.get(url)
            finally:
                sys.settrace(None)
                counter.on = False

    if is_async:
        asyncio.run(series_async())
    else:
        series_sync()
    return counter.per_request(n)


def _client_part(backend: Backend, ids: Identities, n: int) -> list[dict[str, Any]]:
    from meshlib.integrations.httpx_mesh import AsyncMeshTransport, MeshTransport
    from meshlib.runtime.view import standalone_view
    from meshlib.telemetry.metrics import MeshTelemetry
    from meshlib.traffic.balancers import StatsRegistry

    engine = make_engine([("127.0.0.1", backend.http_tls, "v1")], None, str(ids.server.spiffe_id))
    ctx = ids.client_context
    telemetry = MeshTelemetry(service="frontend", namespace="default")  # metrics, no tracer
    tls_url = f"https://127.0.0.1:{backend.http_tls}{PATH}"

    def mesh(is_async: bool) -> Callable[[], Any]:
        def make() -> Any:
            kwargs: dict[str, Any] = {
                "view": standalone_view(engine, stats=StatsRegistry()),
                "tls": lambda: ctx,
                "telemetry": telemetry,
            }
            if is_async:
                return httpx.AsyncClient(transport=AsyncMeshTransport(**kwargs))
            return httpx.Client(transport=MeshTransport(**kwargs))

        return make

    rows = []
    for flavour, is_async in (("sync", False), ("async", True)):
        plain = httpx.AsyncClient if is_async else httpx.Client
        base = _client_steps(tls_url, lambda plain=plain: plain(verify=ctx), is_async, n)
        meshed = _client_steps(f"http://backend{PATH}", mesh(is_async), is_async, n)
        rows.append(_compare(f"client, {flavour}: httpx mTLS -> mesh client", base, meshed))
    telemetry.shutdown()
    return rows


# --------------------------------------------------------------------- server side

_CALLER = r"""
import httpx, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2]); ctx.check_hostname = False
ctx.load_cert_chain(sys.argv[3], sys.argv[4])
with httpx.Client(verify=ctx) as c:
    url = f"https://127.0.0.1:{sys.argv[1]}/work"
    for _ in range(20): c.get(url).raise_for_status()
    print("ready", flush=True); sys.stdin.readline()
    for _ in range(int(sys.argv[5])): c.get(url).raise_for_status()
    print("done", flush=True)
"""


def _server_steps(
    start: Callable[[Callable[..., Any]], tuple[int, Callable[[], None]]],
    files: dict[str, Path],
    n: int,
) -> dict[str, float]:
    counter = _Counter()
    port, stop = start(counter.trace)
    args = [str(port), str(files["ca"]), str(files["cert"]), str(files["key"]), str(n)]
    try:
        with subprocess.Popen(
            [sys.executable, "-c", _CALLER, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as caller:  # the with-block closes its pipes and waits for it
            assert caller.stdin is not None and caller.stdout is not None
            try:
                if caller.stdout.readline().strip() != "ready":
                    raise RuntimeError("the server-side caller did not start")
                counter.on = True
                caller.stdin.write("\n")
                caller.stdin.flush()
                if caller.stdout.readline().strip() != "done":
                    raise RuntimeError("the server-side caller did not finish")
            finally:
                counter.on = False
                if caller.poll() is None:
                    caller.stdin.close()
                    try:
                        caller.wait(30)
                    except subprocess.TimeoutExpired:
                        caller.kill()
    finally:
        stop()
    return counter.per_request(n)


def _in_thread(serve: Callable[[], Any], trace: Callable[..., Any]) -> threading.Thread:
    def run() -> None:
        sys.settrace(trace)
        asyncio.run(serve())

    thread = threading.Thread(target=run, name="steps-server", daemon=True)
    thread.start()
    return thread


def _wait(started: Callable[[], bool], thread: threading.Thread) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while not started():
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server under test did not start")
        time.sleep(0.02)


def _server_part(n: int) -> dict[str, Any]:
    import uvicorn

    from benchmarks.apps.backend import http_app
    from meshlib.identity.keys import write_private_file
    from meshlib.integrations.uvicorn import MeshServer
    from meshlib.testing import TestMesh

    with TestMesh() as tm, tempfile.TemporaryDirectory() as tmp:
        caller_id = tm.spiffe_id("frontend")
        tm.apply(
            "apiVersion: meshlib.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow}\n"
            "spec:\n  service: backend\n  action: ALLOW\n  rules:\n"
            f'  - from: {{principals: ["{caller_id}"]}}\n'
            "    to: {methods: [GET], paths: [/work]}\n"
        )
        mesh = tm.mesh("backend")
        server_svid, caller_svid = (
            tm.ca.mint("backend", "default"),
            tm.ca.mint("frontend", "default"),
        )
        files = {name: Path(tmp) / name for name in ("s.pem", "s.key", "ca", "cert", "key")}
        for name, data in (
            ("s.pem", server_svid.cert_chain_pem),
            ("s.key", server_svid.key_pem),
            ("ca", tm.ca.bundle_pem),
            ("cert", caller_svid.cert_chain_pem),
            ("key", caller_svid.key_pem),
        ):
            write_private_file(files[name], data)

        def bare(trace: Callable[..., Any]) -> tuple[int, Callable[[], None]]:
            server = uvicorn.Server(
                uvicorn.Config(
                    http_app(), host="127.0.0.1", port=0, http="httptools", log_level="warning",
                    ssl_certfile=str(files["s.pem"]), ssl_keyfile=str(files["s.key"]),
                    ssl_ca_certs=str(files["ca"]), ssl_cert_reqs=ssl.CERT_REQUIRED,
                )
            )  # fmt: skip
            thread = _in_thread(server.serve, trace)
            _wait(lambda: server.started, thread)
            port = int(server.servers[0].sockets[0].getsockname()[1])

            def stop() -> None:
                server.should_exit = True
                thread.join(10)

            return port, stop

        def meshed(trace: Callable[..., Any]) -> tuple[int, Callable[[], None]]:
            server = MeshServer(http_app(), mesh=mesh, host="127.0.0.1", port=0)
            thread = _in_thread(server.serve, trace)
            _wait(lambda: server.started, thread)

            def stop() -> None:
                server.stop()
                thread.join(10)

            return server.bound_port(), stop

        base = _server_steps(bare, files, n)
        other = _server_steps(meshed, files, n)
    return _compare("server: uvicorn with TLS -> meshlib.serve", base, other)


def measure_steps(profile: Profile, backend: Backend, ids: Identities) -> dict[str, Any]:
    """Interpreter steps per request, client and server side (see the module docstring)."""
    n = profile.steps_requests
    rows = _client_part(backend, ids, n)
    rows.append(_server_part(n))
    return {"requests": n, "rows": rows}
