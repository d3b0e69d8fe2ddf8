"""Retries, retry budget, circuit breaker, outlier detection, pool limits and a chaos run.

One control service and four instances of ``backend`` (tests/integration/fault_app.py) serve
the whole module; each test applies its own TrafficPolicy and uses a fresh caller Mesh, so
client-side state (budget, breakers, ejections) starts clean. Subsets pick the instances
by label:

* ``ok`` — healthy; ``kind=ok,a=1,b=1,c=1,d=1,zone=b``
* ``bad`` — answers 503 to everything but /count; ``kind=bad503,a=1,c=1,zone=a``
* ``reset`` — TLS handshake, reads, aborts without answering; ``kind=reset,b=1``
* ``victim`` — healthy until SIGKILLed by the chaos test; ``kind=victim,c=1``
* ``dead`` — registered by one test from this process, nothing listens; ``kind=dead,d=1``
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

import meshlib
from meshlib.errors import CircuitOpen, MeshError, PoolOverflow
from tests.integration.fleet import FleetBase
from tests.integration.harness import Service, free_port, wait_endpoints, wait_for

pytestmark = pytest.mark.integration

SERVICE = "backend"
INSTANCES = {
    "ok": ("kind=ok,a=1,b=1,c=1,d=1,zone=b", ""),
    "bad": ("kind=bad503,a=1,c=1,zone=a", "always503"),
    "reset": ("kind=reset,b=1", "reset"),
    "victim": ("kind=victim,c=1", ""),
}
PINNABLE = ("ok", "bad", "victim")  # instances that answer /count


class Fleet(FleetBase):
    """The module's control service, backend instances, admin client and observer."""

    def start(self) -> None:
        """Start the backends (all at once: start-up is mostly imports) and the observer."""
        self._caller_token = self.token("caller", 100)
        token = self.token(SERVICE, len(INSTANCES))
        for name, (labels, mode) in INSTANCES.items():
            self.instances[name] = Service(
                self.control,
                SERVICE,
                self.root,
                labels=labels,
                token=token,
                app="tests.integration.fault_app",
                env={"MODE": mode},
            ).start(wait=False)
        self.observer = self.mesh()  # reads /count with its own breakers and budget
        for name, service in self.instances.items():
            wait_for(lambda s=service: s._listening(), 30, f"{name} listening")
        wait_endpoints(self.observer, SERVICE, len(INSTANCES), timeout=20)

    def mesh(self, labels: dict[str, str] | None = None) -> meshlib.Mesh:
        return self.new_mesh("caller", self._caller_token, labels)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Control service, the four backend instances and an observer, for the whole module."""
    built = Fleet(tmp_path_factory.mktemp("resilience-retries"))
    try:
        built.start()
        yield built
    finally:
        built.close()


@pytest.fixture
def caller(fleet: Fleet) -> Callable[..., meshlib.Mesh]:
    """Fresh caller Meshes (fresh budgets, breakers and ejections) that see every backend."""

    def make(labels: dict[str, str] | None = None) -> meshlib.Mesh:
        mesh = fleet.mesh(labels)  # closed with the module's others, all at once
        wait_endpoints(mesh, SERVICE, 3)
        return mesh

    return make


def policy(marker: str, *, routes: str = "", subset: str = "ok", extra: str = "") -> str:
    """The backend TrafficPolicy: pin routes, then *routes*, then a catch-all to *subset*.

    The catch-all route is named *marker*, so a caller knows when it has the policy.
    """
    pins = "".join(
        f"  - {{name: pin-{name}, match: {{headers: [{{name: x-pin, exact: {name}}}]}}, "
        f"backends: [{{subset: {name}}}]}}\n"
        for name in PINNABLE
    )
    return f"""
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {{name: {SERVICE}, namespace: default}}
spec:
  service: {SERVICE}
  loadBalancer: ROUND_ROBIN
  subsets:
  - {{name: ok, labels: {{kind: ok}}}}
  - {{name: bad, labels: {{kind: bad503}}}}
  - {{name: victim, labels: {{kind: victim}}}}
  - {{name: a, labels: {{a: "1"}}}}
  - {{name: b, labels: {{b: "1"}}}}
  - {{name: c, labels: {{c: "1"}}}}
  - {{name: d, labels: {{d: "1"}}}}
  routes:
{pins}{routes}  - {{name: {marker}, backends: [{{subset: {subset}}}]}}
{extra}"""


def apply_policy(fleet: Fleet, text: str, marker: str, *meshes: meshlib.Mesh) -> None:
    """Apply *text* and wait until the observer and *meshes* route with it."""
    fleet.apply(text)
    for mesh in (fleet.observer, *meshes):
        wait_for(
            lambda m=mesh: marker in [p.name for p in m.engine.resolve(SERVICE).plans],
            10,
            f"policy {marker}",
            interval=0.02,
        )


def count(fleet: Fleet, instance: str, key: str) -> int:
    """How many requests of *key* one instance got (asked through the observer)."""
    with fleet.observer.client() as http:
        response = http.get(f"http://{SERVICE}/count/{key}", headers={"x-pin": instance})
    assert response.status_code == 200, response.text
    return int(response.json()["count"])


RETRY_ROUTES = """\
  - name: none
    match: {headers: [{name: x-case, exact: none}]}
    backends: [{subset: ok}]
    retries: {attempts: 0}
  - name: many
    match: {headers: [{name: x-case, exact: many}]}
    backends: [{subset: ok}]
    retries: {attempts: 4, backoff: {baseInterval: 5ms, maxInterval: 20ms}}
  - name: codes
    match: {headers: [{name: x-case, exact: codes}]}
    backends: [{subset: ok}]
    retries: {retryOn: [retriable-status-codes], retriableStatusCodes: [409]}
  - name: post
    match: {headers: [{name: x-case, exact: post}]}
    backends: [{subset: ok}]
    retries: {allowNonIdempotent: true}
"""


def test_retries_follow_attempts_and_retry_on(fleet, caller):
    """Default: 2 retries on gateway errors (not 500) with x-mesh-attempts; attempts and codes."""
    mesh = caller()
    apply_policy(fleet, policy("retry-counts", routes=RETRY_ROUTES), "retry-counts", mesh)
    with mesh.client() as http:
        recovered = http.get(f"http://{SERVICE}/fail/2/rc-two")
        assert recovered.status_code == 200
        assert recovered.headers["x-mesh-attempts"] == "3"
        assert count(fleet, "ok", "rc-two") == 3

        exhausted = http.get(f"http://{SERVICE}/fail/5/rc-five")
        assert exhausted.status_code == 503
        assert exhausted.headers["x-mesh-attempts"] == "3"  # 1 + the default 2 retries
        assert count(fleet, "ok", "rc-five") == 3

        for code in (502, 504):  # the rest of gateway-error
            gateway = http.get(f"http://{SERVICE}/fail/1/rc-{code}?status={code}")
            assert (gateway.status_code, gateway.headers["x-mesh-attempts"]) == (200, "2")

        internal = http.get(f"http://{SERVICE}/fail/1/rc-500?status=500")
        assert internal.status_code == 500  # 500 is not a gateway error
        assert "x-mesh-attempts" not in internal.headers
        assert count(fleet, "ok", "rc-500") == 1

        once = http.get(f"http://{SERVICE}/fail/1/rc-none", headers={"x-case": "none"})
        assert once.status_code == 503
        assert "x-mesh-attempts" not in once.headers
        assert count(fleet, "ok", "rc-none") == 1

        many = http.get(f"http://{SERVICE}/fail/4/rc-many", headers={"x-case": "many"})
        assert (many.status_code, many.headers["x-mesh-attempts"]) == (200, "5")
        assert count(fleet, "ok", "rc-many") == 5

        conflict = http.get(
            f"http://{SERVICE}/fail/2/rc-409?status=409", headers={"x-case": "codes"}
        )
        assert (conflict.status_code, conflict.headers["x-mesh-attempts"]) == (200, "3")
        unlisted = http.get(f"http://{SERVICE}/fail/1/rc-503c", headers={"x-case": "codes"})
        assert unlisted.status_code == 503  # retryOn no longer holds gateway-error
        assert count(fleet, "ok", "rc-503c") == 1


def test_post_is_retried_only_when_safe(fleet, caller):
    """POST is not retried by default; it is with an Idempotency-Key or allowNonIdempotent."""
    mesh = caller()
    apply_policy(fleet, policy("retry-post", routes=RETRY_ROUTES), "retry-post", mesh)
    with mesh.client() as http:
        plain = http.post(f"http://{SERVICE}/fail/1/post-plain", content=b"{}")
        assert plain.status_code == 503
        assert count(fleet, "ok", "post-plain") == 1

        keyed = http.post(
            f"http://{SERVICE}/fail/1/post-keyed",
            content=b"{}",
            headers={"Idempotency-Key": "order-17"},
        )
        assert (keyed.status_code, keyed.headers["x-mesh-attempts"]) == (200, "2")
        assert count(fleet, "ok", "post-keyed") == 2

        allowed = http.post(
            f"http://{SERVICE}/fail/1/post-allowed", content=b"{}", headers={"x-case": "post"}
        )
        assert (allowed.status_code, allowed.headers["x-mesh-attempts"]) == (200, "2")
        assert count(fleet, "ok", "post-allowed") == 2

        put = http.put(f"http://{SERVICE}/fail/1/put-plain", content=b"{}")
        assert put.status_code == 200  # PUT is idempotent: retried without asking
        assert count(fleet, "ok", "put-plain") == 2


def test_retry_prefers_another_endpoint(fleet, caller):
    """With one always-503 instance beside a healthy one, every GET succeeds on its retry."""
    mesh = caller()
    apply_policy(fleet, policy("retry-other", subset="a"), "retry-other", mesh)
    retried = 0
    with mesh.client() as http:
        for _ in range(20):
            response = http.get(f"http://{SERVICE}/hit/other-ep")
            assert response.status_code == 200, response.text
            assert "kind=ok" in response.json()["labels"]
            attempts = response.headers.get("x-mesh-attempts")
            assert attempts in (None, "2")  # never the same bad endpoint twice
            retried += attempts == "2"
    bad_hits = count(fleet, "bad", "other-ep")
    assert bad_hits >= 5  # round robin sends about half the first tries there
    assert retried == bad_hits  # each of them was retried once, on the healthy instance
    assert count(fleet, "ok", "other-ep") == 20


def test_resets_are_retried_but_not_for_post(fleet, caller):
    """A connection aborted without a response is retried on another endpoint; a POST is not."""
    mesh = caller()
    apply_policy(fleet, policy("retry-reset", subset="b"), "retry-reset", mesh)
    with mesh.client() as http:
        attempts = []
        for _ in range(10):
            response = http.get(f"http://{SERVICE}/hit/reset-get")
            assert response.status_code == 200, response.text
            attempts.append(response.headers.get("x-mesh-attempts", "1"))
        assert "2" in attempts and set(attempts) <= {"1", "2"}, attempts
        assert count(fleet, "ok", "reset-get") == 10

        failures = 0
        for _ in range(4):
            try:
                assert http.post(f"http://{SERVICE}/hit/reset-post", content=b"x").is_success
            except httpx.TransportError:
                failures += 1  # surfaced as the transport error it is, not retried
        assert failures == 2
        assert count(fleet, "ok", "reset-post") == 2


def test_connect_failures_are_retried_on_another_endpoint(fleet, caller):
    """An endpoint that refuses connections costs a retry, never a failed GET."""
    dead = meshlib.Mesh(
        service=SERVICE,
        control_url=fleet.control.url,
        token=fleet.token(SERVICE, 1),
        data_dir=fleet.root / "dead",
        labels={"kind": "dead", "d": "1"},
        start_timeout=20,
    ).start()
    try:
        dead.set_endpoint("127.0.0.1", free_port())  # registered; nothing listens there
        mesh = caller()
        wait_for(
            lambda: "dead" in [e.label("kind") for e in mesh.engine.resolve(SERVICE).endpoints],
            10,
            "the dead endpoint in the snapshot",
        )
        apply_policy(fleet, policy("connect", subset="d"), "connect", mesh)
        with mesh.client() as http:
            answers = [http.get(f"http://{SERVICE}/hit/connect") for _ in range(10)]
    finally:
        dead.close()
    assert [r.status_code for r in answers] == [200] * 10
    attempts = [r.headers.get("x-mesh-attempts", "1") for r in answers]
    assert "2" in attempts and set(attempts) <= {"1", "2"}, attempts
    assert count(fleet, "ok", "connect") == 10


def test_exhausted_retry_budget_stops_a_retry_storm(fleet, caller):
    """Against an always-503 service a small budget caps retries; responses carry the flag."""
    mesh = caller()
    budget = "  retryBudget: {percent: 10, minRetriesPerSecond: 1, ttl: 10s}\n"
    apply_policy(fleet, policy("storm", subset="bad", extra=budget), "storm", mesh)
    requests, flagged = 40, 0
    with mesh.client() as http:
        for _ in range(requests):
            response = http.get(f"http://{SERVICE}/hit/storm")
            assert response.status_code == 503
            flagged += response.headers.get("x-mesh-flag") == "RETRY_BUDGET_EXHAUSTED"
    retries = count(fleet, "bad", "storm") - requests
    # Reserve 1/s x 10 s = 10 tokens plus 10 % of 40 requests = 4: at most 14 retries (and
    # at least 13: a retry is refused only below one token). Unbudgeted: 80.
    assert 13 <= retries <= 14, retries
    assert flagged >= requests - 7, flagged  # at most 7 requests got both their retries


def test_circuit_breaker_opens_and_half_open_probe_decides(fleet, caller):
    """Breaker opens after consecutiveFailures; a failed probe reopens it, a good one closes it."""
    mesh = caller()
    extra = "  circuitBreaker: {consecutiveFailures: 3, resetTimeout: 1s}\n"
    routes = "  - {name: cb-no-retry, backends: [{subset: ok}], retries: {attempts: 0}}\n"
    apply_policy(fleet, policy("breaker", routes=routes, extra=extra), "cb-no-retry", mesh)
    url = f"http://{SERVICE}/fail/4/cb"
    with mesh.client() as http:
        assert [http.get(url).status_code for _ in range(3)] == [503, 503, 503]
        began = time.monotonic()
        with pytest.raises(CircuitOpen) as opened:
            http.get(url)
        assert time.monotonic() - began < 0.5  # refused locally
        assert opened.value.flag == "CIRCUIT_OPEN"
        assert opened.value.service == f"{SERVICE}.default"
        assert count(fleet, "ok", "cb") == 3

        time.sleep(1.1)
        assert http.get(url).status_code == 503  # the half-open probe: 4th failure
        with pytest.raises(CircuitOpen):
            http.get(url)  # reopened at once
        assert count(fleet, "ok", "cb") == 4

        time.sleep(1.1)
        assert http.get(url).status_code == 200  # probe succeeds: closed
        assert [http.get(url).status_code for _ in range(3)] == [200, 200, 200]
    assert count(fleet, "ok", "cb") == 8


def test_outlier_detection_ejects_then_readmits(fleet, caller):
    """A failing endpoint is ejected (traffic only reaches the healthy one) for baseEjectionTime."""
    mesh = caller()
    extra = (
        "  outlierDetection: {consecutive5xx: 2, consecutiveGatewayErrors: 2, interval: 10s,\n"
        "                     baseEjectionTime: 1s, maxEjectionPercent: 50}\n"
    )
    routes = "  - {name: od-no-retry, backends: [{subset: a}], retries: {attempts: 0}}\n"
    apply_policy(fleet, policy("outlier", routes=routes, extra=extra), "od-no-retry", mesh)
    url = f"http://{SERVICE}/hit/outlier"
    with mesh.client() as http:
        statuses = []
        for _ in range(8):
            statuses.append(http.get(url).status_code)
            if statuses.count(503) == 2:
                break
        ejected_at = time.monotonic()
        assert statuses.count(503) == 2, statuses
        during = [http.get(url) for _ in range(20)]
        assert time.monotonic() - ejected_at < 0.9  # all of them inside the ejection
        assert [r.status_code for r in during] == [200] * 20
        assert all("kind=ok" in r.json()["labels"] for r in during)
        assert count(fleet, "bad", "outlier") == 2

        back_at = None
        for _ in range(200):  # about 4 s at most
            if http.get(url).status_code == 503:
                back_at = time.monotonic()
                break
            if time.monotonic() > ejected_at + 4:
                break
            time.sleep(0.02)
    assert back_at is not None, "the ejected endpoint never came back"
    assert 0.9 <= back_at - ejected_at <= 2.0, back_at - ejected_at
    assert count(fleet, "bad", "outlier") == 3


async def _gather_gets(http: httpx.AsyncClient, path: str, n: int) -> list[tuple[object, float]]:
    """*n* concurrent GETs: each one's status (or PoolOverflow) and duration."""

    async def one() -> tuple[object, float]:
        began = time.monotonic()
        try:
            result: object = (await http.get(f"http://{SERVICE}{path}")).status_code
        except PoolOverflow as exc:
            result = exc
        return result, time.monotonic() - began

    return list(await asyncio.gather(*(one() for _ in range(n))))


def _timed_gets(mesh: meshlib.Mesh, path: str, n: int) -> list[tuple[object, float]]:
    """:func:`_gather_gets` on a new async client."""

    async def run() -> list[tuple[object, float]]:
        async with mesh.async_client() as http:
            return await _gather_gets(http, path, n)

    return asyncio.run(run())


def test_pool_limits_fail_fast(fleet, caller):
    """Past maxConnections + maxPending requests in flight, calls fail at once with PoolOverflow."""
    mesh = caller()
    extra = "  connectionPool: {maxConnections: 1, maxPending: 0}\n"
    apply_policy(fleet, policy("pool-0", extra=extra), "pool-0", mesh)
    results = _timed_gets(mesh, "/slow/500/pool", 4)
    assert [r for r, _ in results].count(200) == 1, results
    overflows = [(r, t) for r, t in results if isinstance(r, PoolOverflow)]
    assert len(overflows) == 3, results
    assert all(t < 0.3 for _, t in overflows), results  # failed fast, not after the 500 ms
    assert overflows[0][0].flag == "POOL_OVERFLOW"
    assert [r for r, _ in (_timed_gets(mesh, "/slow/0/pool", 1))] == [200]

    extra = "  connectionPool: {maxConnections: 1, maxPending: 1}\n"
    apply_policy(fleet, policy("pool-1", extra=extra), "pool-1", mesh)
    results = _timed_gets(mesh, "/slow/300/pool", 4)
    done = sorted(t for r, t in results if r == 200)
    assert len(done) == 2, results
    assert done[1] >= 0.55  # the pending one waited for the single connection


def test_open_client_follows_a_max_connections_update(fleet, caller):
    """A client kept open across a connectionPool update sends with the new maxConnections."""
    mesh = caller()
    one = "  connectionPool: {maxConnections: 1, maxPending: 3}\n"
    four = "  connectionPool: {maxConnections: 4, maxPending: 0}\n"
    apply_policy(fleet, policy("resize-1", extra=one), "resize-1", mesh)

    async def run() -> tuple[list[tuple[object, float]], list[tuple[object, float]]]:
        async with mesh.async_client() as http:
            before = await _gather_gets(http, "/slow/300/resize", 4)
            await asyncio.to_thread(
                apply_policy, fleet, policy("resize-4", extra=four), "resize-4", mesh
            )
            after = await _gather_gets(http, "/slow/300/resize", 4)
        return before, after

    before, after = asyncio.run(run())
    assert [r for r, _ in before] == [200] * 4, before
    assert max(t for _, t in before) >= 1.1  # one connection: one request after another
    assert [r for r, _ in after] == [200] * 4, after
    assert max(t for _, t in after) < 0.9, after  # four connections: side by side


def test_retry_leaves_the_zone_whose_only_endpoint_failed(fleet, caller):
    """A zone-a caller's retry goes to the zone-b endpoint when zone a's only endpoint gave 503."""
    mesh = caller({"zone": "a"})
    apply_policy(fleet, policy("zone-retry", subset="a"), "zone-retry", mesh)
    with mesh.client() as http:
        responses = [http.get(f"http://{SERVICE}/hit/zone-retry") for _ in range(5)]
    assert count(fleet, "bad", "zone-retry") >= 5  # zone a is preferred for first tries
    assert [r.status_code for r in responses] == [200] * 5


def test_chaos_kill_and_503_keep_success_above_999(fleet, caller):
    """Three instances, one SIGKILLed mid-run and one always 503: >= 99.9 % of 1100 GETs succeed."""
    mesh = caller()
    extra = (
        "  retryBudget: {percent: 50, minRetriesPerSecond: 20, ttl: 10s}\n"
        "  outlierDetection: {consecutiveGatewayErrors: 3, interval: 10s, baseEjectionTime: 2s,\n"
        "                     maxEjectionPercent: 100}\n"
    )
    apply_policy(fleet, policy("chaos", subset="c", extra=extra), "chaos", mesh)
    total, kill_at, ok, retried_after_kill, failures = 1100, 300, 0, 0, []
    began = time.monotonic()
    with mesh.client() as http:
        for i in range(total):
            if i == kill_at:
                assert count(fleet, "victim", "chaos") > 0  # it had its share until now
                victim = fleet.instances["victim"].process.proc
                assert victim is not None
                victim.kill()  # SIGKILL: no withdrawal, its registration stays until expiry
            try:
                response = http.get(f"http://{SERVICE}/hit/chaos")
            except (MeshError, httpx.HTTPError) as exc:
                failures.append(repr(exc))
                continue
            if response.status_code == 200:
                ok += 1
                retried_after_kill += i >= kill_at and "x-mesh-attempts" in response.headers
            else:
                failures.append(response.status_code)
            assert time.monotonic() - began < 60, f"too slow: {i} requests"
    assert ok / total >= 0.999, failures
    assert retried_after_kill > 0  # the dead instance's connect failures were retried
    assert count(fleet, "bad", "chaos") > 0  # the 503 instance was in the mix
