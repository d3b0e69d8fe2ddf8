"""Import from Consul: meshed clients reach ExternalServices that a FAKE Consul lists.

A real control service and an in-process meshed client (real mTLS to the control service);
the legacy instances are plain HTTP(S) servers registered only in the fake Consul
(tests/consul/fake_consul.py, built from consul-api-double: not a real Consul).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

import meshlib
from tests.consul.backends import Backend
from tests.consul.fake_consul import FakeConsul
from tests.etcd_cluster import EtcdTLS
from tests.integration.harness import Control, wait_for

EXTERNAL = """
apiVersion: meshlib.io/v1
kind: ExternalService
metadata: {name: legacy-billing}
spec:
  consul: {service: billing, tags: [prod]}
---
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {name: legacy-billing}
spec:
  service: legacy-billing
  loadBalancer: ROUND_ROBIN
  subsets:
  - {name: v2, labels: {version: v2}}
  routes:
  - name: v2-only
    match: {path: {prefix: /v2/}}
    backends: [{subset: v2}]
  - name: all
    timeout: 2s
    retries: {attempts: 3, retryOn: [gateway-error]}
"""


@pytest.fixture
def plane(tmp_path: Path, fake_consul: FakeConsul) -> Iterator[Control]:
    control = Control(tmp_path / "control", "--consul", fake_consul.url, "--consul-token", "s3cret")
    control.start()
    yield control
    control.stop()


@pytest.fixture
def client(tmp_path: Path, plane: Control) -> Iterator[meshlib.Mesh]:
    mesh = meshlib.Mesh(
        service="frontend",
        control_url=plane.url,
        token=plane.token("frontend"),
        data_dir=tmp_path / "frontend",
        start_timeout=20,
    )
    mesh.start()
    yield mesh
    mesh.close()


def _endpoints(mesh: meshlib.Mesh, name: str) -> Callable[[], list[int]]:
    def ports() -> list[int]:
        entry = mesh.engine.resolve(name)
        return [] if entry is None else sorted(e.port for e in entry.endpoints)

    return ports


def _check(control: Control, name: str) -> dict[str, str] | None:
    checks = json.loads(control.meshctl("check", "-o", "json").stdout)
    return next((c for c in checks if c["name"] == name), None)


def test_external_service_gets_the_traffic_policy_and_follows_consul(
    plane: Control, client: meshlib.Mesh, fake_consul: FakeConsul
):
    """http://legacy-billing/ reaches Consul's passing instances (tag-selected) in plaintext
    with retries and subsets applied; a check going critical removes one through a blocking
    query; a Consul outage keeps the last endpoints and is reported."""
    with (
        Backend("broken", status=503) as broken,
        Backend("good") as good,
        Backend("other-tag") as other,
    ):
        fake_consul.add("billing", "b-broken", "127.0.0.1", broken.port, ["prod", "version=v1"])
        fake_consul.add("billing", "b-good", "127.0.0.1", good.port, ["prod", "version=v2"])
        fake_consul.add("billing", "b-other", "127.0.0.1", other.port, ["staging"])
        applied = plane.meshctl("apply", "-f", "-", stdin=EXTERNAL)
        assert applied.returncode == 0, applied.stderr
        assert "no known service" not in applied.stdout + applied.stderr  # it is a destination
        wanted = sorted([broken.port, good.port])
        wait_for(lambda: _endpoints(client, "legacy-billing")() == wanted, 10, "both endpoints")
        entry = client.engine.resolve("legacy-billing")
        assert entry is not None and entry.spiffe_id == "" and entry.external is not None

        with client.client() as http:
            answers = [http.get("http://legacy-billing/pay").json()["name"] for _ in range(6)]
            assert answers == ["good"] * 6  # the 503s were retried onto the good instance
            assert broken.hits >= 2  # round robin did send there
            assert other.hits == 0  # not tagged prod
            assert {http.get("http://legacy-billing/v2/x").json()["name"] for _ in range(3)} == {
                "good"
            }
        # the route's timeout travels as the mesh's deadline header: a mesh call, not bypassed
        assert "x-mesh-deadline-ms" in {k.lower() for k in good.headers[-1]}

        explained = json.loads(plane.ok("explain", "legacy-billing", "-o", "json"))
        assert explained["external"]["identity"].startswith("none: no mesh identity")
        assert explained["external"]["used"] is True
        assert sorted(e["port"] for e in explained["external"]["endpoints"]) == wanted

        fake_consul.set_status("b-broken", "critical")  # wakes the blocking query
        wait_for(lambda: _endpoints(client, "legacy-billing")() == [good.port], 10, "one endpoint")
        fake_consul.__exit__(None, None, None)  # Consul goes away
        check = wait_for(
            lambda: (c := _check(plane, "consul import")) and c["status"] != "ok" and c,
            15,
            "the import failure in meshctl check",
        )
        assert "unreachable" in check["message"], check
        with client.client() as http:  # the last known endpoints are still used
            assert http.get("http://legacy-billing/pay").json()["name"] == "good"
        assert _endpoints(client, "legacy-billing")() == [good.port]


def test_tls_external_service_is_verified_against_its_ca(
    tmp_path: Path, plane: Control, client: meshlib.Mesh, fake_consul: FakeConsul
):
    """tls: tls reaches an HTTPS instance whose certificate chains to caCertificate and
    refuses one signed by another CA (no request sent)."""
    ours = EtcdTLS.create(tmp_path / "ours")
    theirs = EtcdTLS.create(tmp_path / "theirs")
    with (
        Backend("secure", tls=(ours.server_cert, ours.server_key)) as secure,
        Backend("impostor", tls=(theirs.server_cert, theirs.server_key)) as impostor,
    ):
        fake_consul.add("secure-billing", "s1", "127.0.0.1", secure.port, [])
        fake_consul.add("impostor-billing", "i1", "127.0.0.1", impostor.port, [])
        ca = ours.ca.read_text().replace("\n", "\n    ")
        docs = [
            f"apiVersion: meshlib.io/v1\nkind: ExternalService\nmetadata: {{name: {name}}}\n"
            f"spec:\n  tls: tls\n  caCertificate: |\n    {ca}\n"
            for name in ("secure-billing", "impostor-billing")
        ]
        plane.apply("---\n".join(docs))
        for name in ("secure-billing", "impostor-billing"):
            wait_for(lambda n=name: _endpoints(client, n)(), 10, f"{name} endpoints")
        with client.client() as http:
            assert http.get("http://secure-billing/x").json()["name"] == "secure"
            with pytest.raises(httpx.HTTPError):
                http.get("http://impostor-billing/x")
        assert impostor.hits == 0
        explained = json.loads(plane.ok("explain", "secure-billing", "-o", "json"))
        assert "server-authenticated TLS" in explained["external"]["identity"]
