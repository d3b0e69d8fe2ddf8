"""Route matching, deadlines, fault injection, mirroring, hot updates, locality, rate limits.

One control service and seven instances of tests/integration/fault_app.py serve the module:
``shop`` v1 (zone a) and v2 (zone b), ``relay`` (calls other services with its own mesh
client), ``geo`` in zones a and b, ``quota`` (rate limited) and ``drain`` (stopped by one
test). Each test applies its own
policies and waits until the callers route with them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import meshlib
from meshlib.errors import DeadlineExceeded
from meshlib.integrations.httpx import IdentityTransport
from tests.integration.fleet import FleetBase
from tests.integration.harness import Service, wait_endpoints, wait_for

pytestmark = pytest.mark.integration

INSTANCES = {  # name: (service, labels)
    "shop-v1": ("shop", "version=v1,zone=a"),
    "shop-v2": ("shop", "version=v2,zone=b"),
    "relay": ("relay", "role=relay"),
    "geo-a": ("geo", "zone=a"),
    "geo-b": ("geo", "zone=b"),
    "quota": ("quota", "role=quota"),
    "drain": ("drain", "role=drain"),
}


class Fleet(FleetBase):
    """The module's control service, instances, admin client and the caller ``frontend``."""

    def start(self) -> None:
        """Start every instance at once (start-up is mostly imports) and the frontend."""
        tokens = {service: self.token(service, 2) for service in {s for s, _ in INSTANCES.values()}}
        for name, (service, labels) in INSTANCES.items():
            self.instances[name] = Service(
                self.control,
                service,
                self.root,
                labels=labels,
                token=tokens[service],
                app="tests.integration.fault_app",
            ).start(wait=False)
        self.frontend = self.mesh("frontend")
        for name, instance in self.instances.items():
            wait_for(lambda s=instance: s._listening(), 30, f"{name} listening")
        for service in ("shop", "geo"):
            wait_endpoints(self.frontend, service, 2, timeout=20)
        for service in ("relay", "quota", "drain"):
            wait_endpoints(self.frontend, service, 1, timeout=20)

    def mesh(self, service: str, labels: dict[str, str] | None = None) -> meshlib.Mesh:
        return self.new_mesh(service, self.token(service, 1), labels)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Control service, seven instances and the frontend caller, for the whole module."""
    built = Fleet(tmp_path_factory.mktemp("resilience-traffic"))
    try:
        built.start()
        yield built
    finally:
        built.close()


def shop_policy(marker: str, routes: str = "") -> str:
    """The shop TrafficPolicy: pin routes (x-pin: v1/v2), *routes*, then a catch-all to v1."""
    return f"""
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {{name: shop, namespace: default}}
spec:
  service: shop
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
  routes:
  - {{name: pin-v1, match: {{headers: [{{name: x-pin, exact: v1}}]}}, backends: [{{subset: v1}}]}}
  - {{name: pin-v2, match: {{headers: [{{name: x-pin, exact: v2}}]}}, backends: [{{subset: v2}}]}}
{routes}  - {{name: {marker}, backends: [{{subset: v1}}]}}
"""


def apply_policy(fleet: Fleet, text: str, service: str, marker: str) -> None:
    """Apply *text*; wait until the frontend routes *service* with route *marker*."""
    fleet.apply(text)
    wait_for(
        lambda: marker in [p.name for p in fleet.frontend.engine.resolve(service).plans],
        10,
        f"{service} policy {marker}",
        interval=0.02,
    )


def shop_count(fleet: Fleet, version: str, key: str) -> int:
    with fleet.frontend.client() as http:
        response = http.get(f"http://shop/count/{key}", headers={"x-pin": version})
    assert response.status_code == 200, response.text
    return int(response.json()["count"])


ROUTES = """\
  - name: exact
    match: {path: {exact: /hit/special}}
    backends: [{subset: v2}]
  - name: prefix
    match: {path: {prefix: /hit/}}
    backends: [{subset: v1}]
  - name: regex
    match: {path: {regex: "/item/[0-9]+"}}
    backends: [{subset: v2}]
  - name: method
    match: {methods: [DELETE]}
    backends: [{subset: v2}]
  - name: header-exact
    match: {headers: [{name: x-canary, exact: "yes"}]}
    backends: [{subset: v2}]
  - name: header-regex
    match: {headers: [{name: x-user, regex: "admin-[a-z]+"}]}
    backends: [{subset: v2}]
  - name: all-of
    match:
      path: {prefix: /both/}
      methods: [POST]
      headers: [{name: x-flag, present: true}]
    backends: [{subset: v2}]
"""


def test_routes_match_in_order_by_path_method_and_headers(fleet):
    """The first matching route wins; path exact/prefix/regex, methods and headers pick subsets."""
    apply_policy(fleet, shop_policy("match-rest", ROUTES), "shop", "match-rest")
    cases = [
        ("GET", "/hit/special", {}, "v2"),  # exact, listed before the prefix that also matches
        ("GET", "/hit/special/more", {}, "v1"),  # prefix
        ("GET", "/hit/other", {}, "v1"),
        ("GET", "/item/42", {}, "v2"),  # regex
        ("GET", "/item/42?page=2", {}, "v2"),  # the query string is ignored
        ("GET", "/item/42/parts", {}, "v1"),  # a regex must match the whole path
        ("GET", "/item/abc", {}, "v1"),
        ("DELETE", "/other", {}, "v2"),  # method
        ("GET", "/other", {}, "v1"),
        ("GET", "/other", {"x-canary": "yes"}, "v2"),  # header exact
        ("GET", "/other", {"x-canary": "no"}, "v1"),
        ("GET", "/other", {"x-user": "admin-eve"}, "v2"),  # header regex, whole value
        ("GET", "/other", {"x-user": "admin-eve1"}, "v1"),
        ("POST", "/both/1", {"x-flag": ""}, "v2"),  # path and method and header present
        ("POST", "/both/1", {}, "v1"),
        ("GET", "/both/1", {"x-flag": "1"}, "v1"),
    ]
    with fleet.frontend.client() as http:
        for method, path, headers, version in cases:
            response = http.request(method, f"http://shop{path}", headers=headers)
            assert response.status_code == 200, (method, path, response.text)
            got = response.json()["labels"]
            assert f"version={version}" in got, (method, path, headers, got)


def test_route_timeout_is_the_call_deadline(fleet):
    """A route's timeout bounds the call (DeadlineExceeded); perTryTimeout retries a slow try."""
    routes = """\
  - name: short
    match: {path: {prefix: /slow/}}
    backends: [{subset: v1}]
    timeout: 300ms
  - name: per-try
    match: {path: {prefix: /stall/}}
    backends: [{subset: v1}]
    timeout: 3s
    retries: {perTryTimeout: 200ms}
"""
    apply_policy(fleet, shop_policy("timeouts", routes), "shop", "timeouts")
    with fleet.frontend.client() as http:
        began = time.monotonic()
        with pytest.raises(DeadlineExceeded) as raised:
            http.get("http://shop/slow/2000")
        elapsed = time.monotonic() - began
        assert 0.3 <= elapsed < 1.5, elapsed
        assert raised.value.flag == "DEADLINE_EXCEEDED"
        assert raised.value.service == "shop.default"
        assert "route short" in str(raised.value)

        began = time.monotonic()
        response = http.get("http://shop/stall/1/2000/per-try")  # only the first try stalls
        elapsed = time.monotonic() - began
    assert response.status_code == 200
    assert response.headers["x-mesh-attempts"] == "2"
    assert 0.2 <= elapsed < 1.5, elapsed
    assert shop_count(fleet, "v1", "per-try") == 2


def test_deadline_travels_to_the_callee(fleet):
    """The callee sees the caller's remaining time (<= the route timeout; 15 s by default)."""
    routes = """\
  - name: two-seconds
    match: {path: {prefix: /slow/0/timed}}
    backends: [{subset: v1}]
    timeout: 2s
"""
    apply_policy(fleet, shop_policy("deadline", routes), "shop", "deadline")
    with fleet.frontend.client() as http:
        timed = http.get("http://shop/slow/0/timed").json()["remaining_on_arrival"]
        assert 1.5 < timed <= 2.0, timed
        default = http.get("http://shop/slow/0/untimed").json()["remaining_on_arrival"]
        assert 14.0 < default <= 15.0, default  # DEFAULT_TIMEOUT

    # A request whose deadline had passed on arrival is refused by the server.
    shop = fleet.frontend.engine.resolve("shop")
    endpoint = shop.endpoints[0]
    transport = IdentityTransport(expected=shop.spiffe_id, tls=fleet.frontend.tls.client_context)
    with httpx.Client(transport=transport) as raw:
        late = raw.get(
            f"https://{endpoint.address}:{endpoint.port}/slow/0/late",
            headers={"x-mesh-deadline-ms": "0"},
        )
    assert late.status_code == 504
    assert late.headers["x-mesh-flag"] == "DEADLINE_EXCEEDED"


def test_deadline_travels_across_two_hops(fleet):
    """frontend -> relay (timeout 2s) -> geo (no policy): geo sees at most what relay had left."""
    relay_policy = """
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {name: relay, namespace: default}
spec:
  service: relay
  routes:
  - {name: relay-2s, timeout: 2s}
"""
    apply_policy(fleet, relay_policy, "relay", "relay-2s")
    with fleet.frontend.client() as http:
        seen = http.get("http://relay/chain", params={"to": "geo", "path": "/slow/0/hop"}).json()
    assert seen["status"] == 200, seen
    relay_left = seen["remaining_on_arrival"]
    geo_left = seen["body"]["remaining_on_arrival"]
    assert 1.5 < relay_left <= 2.0, seen
    assert 1.0 < geo_left <= relay_left, seen  # inherited, not geo's default 15 s


def test_fault_injection_abort_and_delay_apply_only_with_the_header(fleet):
    """An abort answers locally (status + FAULT_INJECTED), a delay waits; only with the header."""
    routes = """\
  - name: abort
    match: {path: {prefix: /faulty/abort/}}
    backends: [{subset: v1}]
    fault:
      abort: {percent: 100, httpStatus: 418}
      headers: [{name: x-chaos, present: true}]
  - name: delay
    match: {path: {prefix: /faulty/delay/}}
    backends: [{subset: v1}]
    fault:
      delay: {percent: 100, fixedDelay: 300ms}
      headers: [{name: x-chaos, exact: slow}]
"""
    apply_policy(fleet, shop_policy("faults", routes), "shop", "faults")
    with fleet.frontend.client() as http:
        aborted = http.get("http://shop/faulty/abort/fa", headers={"x-chaos": "1"})
        assert aborted.status_code == 418
        assert aborted.headers["x-mesh-flag"] == "FAULT_INJECTED"
        assert aborted.json()["flag"] == "FAULT_INJECTED"
        assert shop_count(fleet, "v1", "fa") == 0  # never sent
        assert http.get("http://shop/faulty/abort/fa").status_code == 200
        assert shop_count(fleet, "v1", "fa") == 1

        began = time.monotonic()
        delayed = http.get("http://shop/faulty/delay/fd", headers={"x-chaos": "slow"})
        assert time.monotonic() - began >= 0.3
        assert delayed.status_code == 200
        assert "x-mesh-flag" not in delayed.headers
        assert shop_count(fleet, "v1", "fd") == 1
        plain = http.get("http://shop/faulty/delay/fd", headers={"x-chaos": "other"})
        assert plain.status_code == 200


def test_mirror_copies_requests_to_v2_and_answers_from_v1(fleet):
    """100 % mirroring to v2: v2 receives copies while every answer still comes from v1."""
    routes = """\
  - name: mirrored
    match: {path: {prefix: /mirror/}}
    backends: [{subset: v1}]
    mirror: {subset: v2, percent: 100}
"""
    apply_policy(fleet, shop_policy("mirror", routes), "shop", "mirror")
    with fleet.frontend.client() as http:
        for _ in range(5):
            response = http.get("http://shop/mirror/mk")
            assert response.status_code == 200
            assert "version=v1" in response.json()["labels"]
        # Mirrors are fire-and-forget on the client's own threads: wait with it open.
        for _ in range(50):  # 5 s at most
            copies = shop_count(fleet, "v2", "mk")
            if copies >= 5:
                break
            time.sleep(0.1)
    assert copies == 5
    assert shop_count(fleet, "v1", "mk") == 5


def test_hot_update_in_flight_request_keeps_its_policy(fleet):
    """A request in flight finishes under the policy it started with; new requests use the new."""
    slow_route = """\
  - name: hot
    match: {{path: {{prefix: /slow/}}}}
    backends: [{{subset: v1}}]
    timeout: {timeout}
"""
    before = shop_policy("hot-before", slow_route.format(timeout="3s"))
    apply_policy(fleet, before, "shop", "hot-before")
    result: dict[str, Any] = {}

    def in_flight() -> None:
        with fleet.frontend.client() as http:
            try:
                result["response"] = http.get("http://shop/slow/1500/hot-old")
            except Exception as exc:  # reported by the assertions below
                result["error"] = exc
            result["done_at"] = time.monotonic()

    worker = threading.Thread(target=in_flight)
    worker.start()
    try:
        wait_for(lambda: shop_count(fleet, "v1", "hot-old") == 1, 5, "request in flight")
        after = shop_policy("hot-after", slow_route.format(timeout="500ms"))
        apply_policy(fleet, after, "shop", "hot-after")
        switched_at = time.monotonic()
        with fleet.frontend.client() as http:
            began = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                http.get("http://shop/slow/1500/hot-new")
            assert time.monotonic() - began < 1.2
    finally:
        worker.join(10)
    assert "error" not in result, result
    old = result["response"]
    assert old.status_code == 200
    assert old.json()["remaining_on_arrival"] > 2.5  # it left with the 3 s deadline
    assert result["done_at"] > switched_at  # and finished after the switch


def test_locality_prefers_own_zone_and_fails_over(fleet):
    """Callers stick to their zone's instance; zone a's caller moves to zone b once a's is gone."""
    zone_a = fleet.mesh("frontend", {"zone": "a"})
    zone_b = fleet.mesh("frontend", {"zone": "b"})
    for mesh in (zone_a, zone_b):
        wait_endpoints(mesh, "geo", 2)
    for mesh, zone in ((zone_a, "a"), (zone_b, "b")):
        with mesh.client() as http:
            labels = {http.get("http://geo/hit/geo").json()["labels"] for _ in range(10)}
        assert labels == {f"zone={zone}"}

    geo_a = fleet.instances["geo-a"]
    began = time.monotonic()
    geo_a.stop()  # SIGTERM: it withdraws its endpoint, then exits
    assert geo_a.process.proc is not None
    stopped = f"exit {geo_a.process.proc.returncode} after {time.monotonic() - began:.1f}s"
    registered = [i["labels"] for i in fleet.control.instances() if i["service"] == "geo"]
    wait_for(
        lambda: len(zone_a.engine.resolve("geo").endpoints) == 1,
        10,
        f"geo-a gone ({stopped}; geo instances then: {registered})",
    )
    with zone_a.client() as http:
        answers = [http.get("http://geo/hit/geo") for _ in range(10)]
    assert [r.status_code for r in answers] == [200] * 10
    assert {r.json()["labels"] for r in answers} == {"zone=b"}


def test_stopping_instance_withdraws_promptly_while_a_caller_keeps_a_connection(fleet):
    """SIGTERM withdraws an instance within 3 s even while a caller holds an idle connection."""
    drain = fleet.instances["drain"]
    assert drain.process.proc is not None
    try:
        with fleet.frontend.client() as http:
            assert http.get("http://drain/hit/keep").status_code == 200  # keep-alive stays open
            drain.process.proc.terminate()
            wait_for(lambda: fleet.frontend.engine.resolve("drain") is None, 3, "drain withdrawn")
    finally:
        drain.stop()  # the client is closed now, so the shutdown can finish


RATE_LIMIT = """
apiVersion: meshlib.io/v1
kind: RateLimit
metadata: {{name: quota-limit, namespace: default}}
spec: {{service: quota, requestsPerSecond: 0.05, burst: 3, perCaller: {per_caller}}}
"""


def _drain(mesh: meshlib.Mesh, limit: int) -> list[httpx.Response]:
    """GET quota until the first 429 (at most *limit* requests)."""
    answers: list[httpx.Response] = []
    with mesh.client() as http:
        for _ in range(limit):
            answers.append(http.get("http://quota/hit/q"))
            if answers[-1].status_code == 429:
                break
    return answers


def test_rate_limit_answers_429_and_per_caller_buckets_are_separate(fleet):
    """A shared bucket limits every caller (429 + Retry-After); perCaller gives each its own."""
    partner = fleet.mesh("partner")
    wait_endpoints(partner, "quota")
    try:
        fleet.apply(RATE_LIMIT.format(per_caller="false"))
        first = wait_for(
            lambda: (r := _drain(fleet.frontend, 1)[0]).status_code == 429 and r,
            10,
            "rate limit in force",
            interval=0.05,
        )
        assert first.headers["x-mesh-flag"] == "RATE_LIMITED"
        retry_after = int(first.headers["retry-after"])
        assert 1 <= retry_after <= 20  # one token per 20 s
        assert first.json()["retryAfter"] == retry_after
        assert _drain(partner, 1)[0].status_code == 429  # the same, shared bucket

        fleet.apply(RATE_LIMIT.format(per_caller="true"))
        wait_for(
            lambda: _drain(fleet.frontend, 1)[0].status_code == 200,
            10,
            "per-caller buckets in force",
            interval=0.05,
        )
        # frontend has used one token of its own bucket of 3, partner none of its own.
        assert [r.status_code for r in _drain(fleet.frontend, 5)] == [200, 200, 429]
        assert [r.status_code for r in _drain(partner, 5)] == [200, 200, 200, 429]
    finally:
        fleet.admin.call("DELETE", "/v1/admin/resources/RateLimit/default/quota-limit")
