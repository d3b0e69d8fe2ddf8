"""Control replicas on a real 3-member etcd cluster: propagation, one-use tokens, faults.

Every replica is a ``meshctl control serve --store etcd://…`` process with its own data
dir, all signing with one CA (``--ca-cert/--ca-key``). Workloads list every replica
(``MESH_CONTROL_URL=a,b,c``) unless a test pins one to a single replica on purpose.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

import meshlib
from meshlib_control.ca.authority import CertificateAuthority
from tests.etcd_cluster import EtcdCluster
from tests.integration.harness import Service, wait_endpoints, wait_for
from tests.integration.test_control_failover import PROBE_POLICY, Replica, Traffic

pytestmark = pytest.mark.integration

PROPAGATION_WITHIN = 1.0  # issue 13: a change on one replica reaches another's watcher
# On a service no test calls: stored, listed, never in the way of the traffic.
LIMIT = """
apiVersion: meshlib.io/v1
kind: RateLimit
metadata: {{name: {name}}}
spec: {{service: ledger, requestsPerSecond: {rps}}}
"""
# In the frontend's snapshot (its route to orders) but only for requests with x-probe: N.
PROBE = """
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {{name: orders, namespace: default}}
spec:
  service: orders
  routes:
  - name: probe
    match: {{headers: [{{name: x-probe, exact: "{n}"}}]}}
    fault: {{abort: {{percent: 100, httpStatus: 418}}}}
"""


class HA:
    """A 3-member etcd cluster and *count* control replicas on it (started by :meth:`up`)."""

    def __init__(self, root: Path, count: int = 3) -> None:
        self.etcd = EtcdCluster(root / "etcd", members=3)
        ca_dir = root / "ca"
        CertificateAuthority.load_or_create(ca_dir, "mesh.local")
        self.ca_pem = ca_dir / "ca.pem"
        self.replicas = [
            Replica(
                root / f"replica{i}" / "data",
                "--store",
                self.etcd.store_url,
                "--ca-cert",
                str(ca_dir / "ca.pem"),
                "--ca-key",
                str(ca_dir / "ca.key"),
                "--instance-ttl",
                "3s",
            )
            for i in range(count)
        ]
        for replica in self.replicas:
            replica.data_dir.parent.mkdir(parents=True)

    def up(self) -> HA:
        try:
            self.etcd.start()
            for replica in self.replicas:
                replica.start()
        except BaseException:
            self.down()
            raise
        return self

    @property
    def urls(self) -> str:
        return ",".join(r.url for r in self.replicas)

    def down(self) -> None:
        for replica in self.replicas:
            replica.stop()
        self.etcd.stop()


@pytest.fixture
def ha(tmp_path: Path) -> Iterator[HA]:
    cluster = HA(tmp_path).up()
    yield cluster
    cluster.down()


def _tls(ha: HA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ha.ca_pem))
    ctx.check_hostname = False  # the chain is verified; the replica's SVID names 127.0.0.1
    return ctx


def _csr(service: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    uri = f"spiffe://mesh.local/ns/default/sa/{service}"
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _sign(ha: HA, replica: Replica, token: str, service: str = "inventory") -> httpx.Response:
    body = {"csr": _csr(service), "token": token}
    return httpx.post(f"{replica.url}/v1/sign", json=body, verify=_tls(ha), timeout=10)


def _mesh(ha: HA, name: str, tmp_path: Path, control: Any, token: str) -> meshlib.Mesh:
    return meshlib.Mesh(
        service=name,
        control_url=control,
        token=token,
        data_dir=tmp_path / f"mesh-{name}",
        start_timeout=20,
    ).start()


def test_same_token_on_two_replicas_at_once_yields_one_svid(ha: HA) -> None:
    """A one-use token presented to two replicas at the same instant signs exactly once."""
    first, second, third = ha.replicas
    for _ in range(3):
        token = first.token("orders", "--uses", "1")
        answers: list[httpx.Response] = []
        barrier = threading.Barrier(2)

        def sign(
            replica: Replica,
            token: str,
            answers: list[httpx.Response],
            barrier: threading.Barrier,
        ) -> None:
            body = {"csr": _csr("orders"), "token": token}
            barrier.wait()
            answers.append(
                httpx.post(f"{replica.url}/v1/sign", json=body, verify=_tls(ha), timeout=10)
            )

        threads = [
            threading.Thread(target=sign, args=(r, token, answers, barrier))
            for r in (second, third)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [200, 401], [a.text for a in answers]
        refused = next(a for a in answers if a.status_code == 401).json()["error"]
        assert refused["code"] == "token-used-up", refused
        assert refused["path"] == "token"
    tokens = json.loads(first.ok("get", "tokens", "-o", "json"))
    assert tokens and all(t["usesLeft"] == 0 for t in tokens)


def test_a_change_on_one_replica_reaches_a_workload_watching_another(
    ha: HA, tmp_path: Path
) -> None:
    """Apply on replica A; a workload pinned to replica B gets it within the target."""
    first, second, _ = ha.replicas
    orders = Service(second, "orders", tmp_path, env={"MESH_CONTROL_URL": second.url}).start()
    frontend = _mesh(ha, "frontend", tmp_path, second.url, first.token("frontend"))
    try:
        wait_endpoints(frontend, "orders")
        delays = []
        for n in range(1, 6):
            held = frontend.engine.version
            first.apply(PROBE.format(n=n))  # returns once replica A stored it in etcd
            applied = time.monotonic()
            wait_for(lambda h=held: frontend.engine.version != h, 5, "the change", interval=0.01)
            delays.append(time.monotonic() - applied)
        assert max(delays) < PROPAGATION_WITHIN, delays
        # Every replica serves the same state, revision and snapshot version.
        listed = [json.loads(r.ok("get", "trafficpolicies", "-o", "json")) for r in ha.replicas]
        assert all(items == listed[0] for items in listed), listed
        assert listed[0][0]["status"]["revision"] == 5
        twin = _mesh(ha, "frontend", tmp_path / "twin", first.url, first.token("frontend"))
        try:  # the same identity watching replica A gets the very same snapshot version
            wait_endpoints(twin, "orders")
            assert twin.engine.version == frontend.engine.version
        finally:
            twin.close()
        # A replica restarted while changes were made catches up before it serves.
        ha.replicas[2].stop()
        first.apply(PROBE_POLICY)
        first.apply(LIMIT.format(name="late", rps=1))
        ha.replicas[2].start()
        late = json.loads(ha.replicas[2].ok("get", "trafficpolicies", "-o", "json"))
        assert late == json.loads(first.ok("get", "trafficpolicies", "-o", "json"))
        assert late[0]["status"]["revision"] == 6
        assert [
            r["metadata"]["name"]
            for r in json.loads(ha.replicas[2].ok("get", "ratelimits", "-o", "json"))
        ] == ["late"]
        with frontend.client() as http:
            wait_for(
                lambda: http.get("http://orders/p", headers={"x-probe": "1"}).status_code == 418,
                5,
                "the probe route",
            )
    finally:
        frontend.close()
        orders.stop()


def test_sigkill_a_replica_then_an_etcd_member_under_traffic(ha: HA, tmp_path: Path) -> None:
    """Lose one of 3 replicas, then one of 3 etcd members: 0 failed requests; joins and
    applies keep working on what is left."""
    first, second, third = ha.replicas
    orders = Service(first, "orders", tmp_path, env={"MESH_CONTROL_URL": ha.urls}).start()
    every = [r.url for r in ha.replicas]
    frontend = _mesh(ha, "frontend", tmp_path, every, first.token("frontend"))
    spare = [second.token("inventory"), second.token("payments")]
    try:
        wait_endpoints(frontend, "orders")
        with frontend.client() as http:

            def call(i: int) -> int:
                return int(http.get(f"http://orders/items/{i}", timeout=5).status_code)

            with Traffic(call, limit=90) as traffic:
                time.sleep(0.5)
                first.kill()
                held = frontend.engine.version
                third.apply(PROBE.format(n=1))
                wait_for(lambda: frontend.engine.version != held, 8, "change after the kill")
                _mesh(ha, "inventory", tmp_path, ha.urls, spare[0]).close()
                ha.etcd.kill(0)
                held = frontend.engine.version
                second.apply(PROBE.format(n=2))
                wait_for(lambda: frontend.engine.version != held, 8, "change after etcd kill")
                _mesh(ha, "payments", tmp_path, ha.urls, spare[1]).close()
                time.sleep(3.5)  # past orders' 3 s lease: its heartbeats went to the survivors
        live = [i for i in second.instances() if i["service"] == "orders"]
        assert live and live[0]["port"] == orders.port
        assert traffic.failures == [], traffic.failures[:5]
        assert traffic.sent >= 100, traffic.sent
    finally:
        frontend.close()
        orders.stop()


def test_quorum_loss_is_read_only_and_loses_nothing(ha: HA, tmp_path: Path) -> None:
    """Without etcd quorum: traffic flows, applies get 503 naming the cause; with quorum
    back, writes resume and everything applied before is still there."""
    first, second, _ = ha.replicas
    orders = Service(first, "orders", tmp_path, env={"MESH_CONTROL_URL": ha.urls}).start()
    every = [r.url for r in ha.replicas]
    frontend = _mesh(ha, "frontend", tmp_path, every, first.token("frontend"))
    first.apply(LIMIT.format(name="before", rps=50))
    token = first.token("inventory")
    try:
        wait_endpoints(frontend, "orders")
        with frontend.client() as http:

            def call(i: int) -> int:
                return int(http.get(f"http://orders/items/{i}", timeout=5).status_code)

            with Traffic(call, limit=90) as traffic:
                ha.etcd.kill(1)
                ha.etcd.kill(2)
                time.sleep(1.0)  # the replicas' health checks see no leader
                # Every write is refused; until a health check (twice a second) has seen
                # the leader gone, a refusal may name etcd's timeout instead: try again
                # (bounded) until it names the quorum loss.
                deadline = time.monotonic() + 10
                while True:
                    refused = second.meshctl(
                        "apply", "-f", "-", stdin=LIMIT.format(name="during", rps=1)
                    )
                    assert refused.returncode != 0
                    assert "store refuses writes" in refused.stderr, refused.stderr
                    if "quorum lost" in refused.stderr or time.monotonic() > deadline:
                        break
                    time.sleep(0.5)
                assert "quorum lost" in refused.stderr, refused.stderr
                # A join: 503 naming the cause, and the token is not spent.
                answer = _sign(ha, second, token)
                assert answer.status_code == 503, answer.text
                assert answer.json()["error"]["code"] == "store-unavailable"
                assert "quorum lost" in answer.json()["error"]["message"]
                # Reads are served from the replica's view.
                names = [
                    r["metadata"]["name"]
                    for r in json.loads(second.ok("get", "ratelimits", "-o", "json"))
                ]
                assert names == ["before"]
                time.sleep(3.5)  # past every lease: none may expire while etcd cannot decide
                wait_endpoints(frontend, "orders", timeout=0.5)
                ha.etcd.start_member(1)
                ha.etcd.start_member(2)
                ha.etcd.wait_healthy([0, 1, 2])
                wait_for(
                    lambda: (
                        second.meshctl(
                            "apply", "-f", "-", stdin=LIMIT.format(name="after", rps=2)
                        ).returncode
                        == 0
                    ),
                    10,
                    "writes to resume",
                    interval=0.5,
                )
                assert _sign(ha, second, token).status_code == 200
                time.sleep(1.0)
        names = sorted(
            r["metadata"]["name"] for r in json.loads(first.ok("get", "ratelimits", "-o", "json"))
        )
        assert names == ["after", "before"]
        assert traffic.failures == [], traffic.failures[:5]
        assert [i["port"] for i in first.instances() if i["service"] == "orders"] == [orders.port]
    finally:
        frontend.close()
        orders.stop()
