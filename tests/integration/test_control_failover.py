"""Workloads fail over between control replicas: SIGKILL the one they watch, lose nothing.

The replicas are real ``meshctl control serve`` processes on a real 3-member etcd cluster
(``--store etcd://…``, tests/etcd_cluster.py), each with its own data dir, all signing with
one CA (``--ca-cert/--ca-key``). Every replica follows the store, so all serve the same
snapshot versions.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import meshlib
from meshlib_control.admin_client import AdminClient
from meshlib_control.ca.authority import CertificateAuthority
from tests.etcd_cluster import EtcdCluster
from tests.integration.harness import MESHCTL, ROOT, Control, Service, wait_endpoints, wait_for

pytestmark = pytest.mark.integration

LEASE = 3.0  # instance lease: a workload that stopped heartbeating is gone after it
FAILOVER_WITHIN = 5.0  # seconds from the SIGKILL to the workload's next answered call

PROBE_POLICY = """
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {name: orders, namespace: default}
spec:
  service: orders
  routes:
  - name: probe
    match: {headers: [{name: x-probe, exact: "1"}]}
    fault: {abort: {percent: 100, httpStatus: 418}}
"""


class Replica(Control):
    """A control replica: ``meshctl`` commands go to this one (``--control``), not the last
    one to start on the data dir."""

    def meshctl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*MESHCTL, "--data-dir", str(self.data_dir), "--control", self.url, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )

    def listing(self, name: str) -> list[dict[str, Any]]:
        """``GET /v1/admin/<name>`` of this replica, in-process (no meshctl start-up)."""
        client = AdminClient(self.data_dir, self.url)
        try:
            return list(client.call("GET", f"/v1/admin/{name}")["items"])
        finally:
            client.close()

    def instances(self) -> list[dict[str, Any]]:
        return self.listing("instances")

    def connected(self) -> list[dict[str, Any]]:
        """The sidecars holding an ADS stream to this replica."""
        return [n for n in self.listing("sidecars") if n["connected"]]

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to the long-polls it holds."""
        assert self.process.proc is not None
        self.process.proc.send_signal(signal.SIGKILL)
        self.process.proc.wait(5)


def replicas(root: Path, store: str, *extra: str) -> list[Replica]:
    """Three replicas on *store*, each with its own data dir, all signing with one CA."""
    ca_dir = root / "ca"
    CertificateAuthority.load_or_create(ca_dir, "mesh.local")
    group = []
    for i in range(3):
        data_dir = root / f"replica{i}" / "data"
        data_dir.parent.mkdir(parents=True)
        ca = ("--ca-cert", str(ca_dir / "ca.pem"), "--ca-key", str(ca_dir / "ca.key"))
        group.append(
            Replica(data_dir, "--instance-ttl", f"{LEASE:g}s", "--store", store, *ca, *extra)
        )
    return group


def start_all(group: list[Replica]) -> None:
    """Start the replicas side by side, then wait (bounded) until each is ready."""
    for member in group:
        member.process.start()
    for member in group:
        wait_for(
            lambda m=member: "ready at" in m.process.output() or not m.process.alive(),  # type: ignore[misc]
            40,
            "control replica",
        )
        assert member.process.alive(), member.process.output()


def urls(group: list[Replica]) -> str:
    return ",".join(r.url for r in group)


class Traffic:
    """Bounded continuous traffic: GETs in a thread until stopped (at most *limit* s)."""

    def __init__(self, call: Any, limit: float = 60.0) -> None:
        self.call = call
        self.limit = limit
        self.sent = 0
        self.failures: list[str] = []
        self.answered: list[float] = []  # when each successful request finished (monotonic)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                status = self.call(self.sent)
                if status != 200:
                    self.failures.append(f"request {self.sent}: status {status}")
                else:
                    self.answered.append(time.monotonic())
            except Exception as exc:  # every error is a failed request, counted
                self.failures.append(f"request {self.sent}: {exc!r}")
            self.sent += 1
            time.sleep(0.02)

    def answered_between(self, start: float, end: float) -> int:
        """How many requests succeeded in [*start*, *end*] (monotonic seconds)."""
        return sum(1 for t in self.answered if start <= t <= end)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd")).start()
    yield cluster
    cluster.stop()


def store(etcd: EtcdCluster, tmp_path: Path) -> str:
    """*etcd* under a key prefix of this test's own: tests share the cluster, not the state."""
    return f"{etcd.store_url}/{tmp_path.name.replace('_', '-')[-40:]}"


@pytest.fixture
def group(tmp_path: Path, etcd: EtcdCluster) -> Iterator[list[Replica]]:
    """Three running replicas on the etcd cluster."""
    members = replicas(tmp_path, store(etcd, tmp_path), "--svid-ttl", "6s")
    try:
        start_all(members)
        yield members
    finally:
        for member in members:
            member.stop()


def test_library_workloads_fail_over_and_resume_their_watch(group, tmp_path, caplog):
    """SIGKILL the replica every workload uses: they move to the next within seconds, no
    request fails, the resumed watch gets no re-push, and a change on a survivor arrives."""
    first, second, third = group
    orders = Service(first, "orders", tmp_path, env={"MESH_CONTROL_URL": urls(group)}).start()
    frontend = meshlib.Mesh(
        service="frontend",
        control_url=[r.url for r in group],  # the sequence form of the argument
        token=first.token("frontend"),
        data_dir=tmp_path / "fe",
        start_timeout=20,
    )
    frontend.start()
    try:
        wait_endpoints(frontend, "orders")
        spare = first.token("inventory")
        agent = frontend._agent
        assert agent._client is not None and agent._client.url == first.url
        held, received = frontend.engine.version, agent.snapshots_received

        with frontend.client() as http:

            def call(i: int) -> int:
                return int(http.get(f"http://orders/items/{i}", timeout=5).status_code)

            with Traffic(call) as traffic:
                time.sleep(0.5)
                first.kill()
                killed = time.monotonic()
                assert agent.svid is not None
                serial_at_kill = agent.svid.serial
                wait_for(
                    lambda: agent._client is not None and agent._client.url == second.url,
                    FAILOVER_WITHIN,
                    "the frontend's control client on the second replica",
                    interval=0.05,
                )
                moved_after = time.monotonic() - killed
                # The watch resumed on the survivor with the version it held: the survivor
                # has that version too, so it answers nothing until something changes.
                time.sleep(1.5)
                assert agent.snapshots_received == received
                assert agent.duplicate_snapshots == 0
                assert frontend.engine.version == held

                # Applied on the other survivor: it reaches the watch on the second via etcd.
                third.apply(PROBE_POLICY)
                wait_for(lambda: frontend.engine.version != held, 5, "the change from the survivor")
                assert agent.snapshots_received == received + 1
                assert agent.duplicate_snapshots == 0
                assert (
                    http.get("http://orders/items/p", headers={"x-probe": "1"}).status_code == 418
                )
                # Reports and renewals went to the survivor too: it records the version the
                # frontend applied, and the SVID (6 s, renewed at half-life) was renewed there.
                wait_for(
                    lambda: any(
                        i["id"] == frontend.instance_id
                        and i["appliedVersion"] == frontend.engine.version
                        for i in second.instances()
                    ),
                    5,
                    "the frontend's report of the new version",
                )
                # Renewal is due at half of 6 s from issuance, which may be just before the
                # kill: wait for it (bounded) rather than read it at one instant.
                wait_for(
                    lambda: agent.svid is not None and agent.svid.serial != serial_at_kill,
                    8,
                    "the SVID renewed by a survivor",
                )
                # orders (a process) moved too: its heartbeats keep it registered on the
                # survivors past its lease, though the replica it first used is gone.
                time.sleep(max(0.0, LEASE + 1 - (time.monotonic() - killed)))
                live = [i for i in second.instances() if i["service"] == "orders"]
                assert live and live[0]["port"] == orders.port, live
                moved = f"control service at {first.url} stopped answering; now using {second.url}"
                assert moved in orders.process.output()
                assert moved in caplog.text
                # A new workload joins with the dead replica first in its list.
                newcomer = meshlib.Mesh(
                    service="inventory",
                    control_url=urls(group),
                    token=spare,
                    data_dir=tmp_path / "inv",
                    start_timeout=15,
                )
                started = time.monotonic()
                newcomer.start()
                newcomer.close()
                assert time.monotonic() - started < 10
                time.sleep(0.5)
        assert traffic.failures == [], traffic.failures[:5]
        # Traffic ran before, through and after the failover, not only around it.
        assert traffic.answered_between(0, killed) >= 2
        assert traffic.answered_between(killed, killed + moved_after + 1) >= 3
        assert traffic.answered_between(killed + moved_after + 1, time.monotonic()) >= 5
        assert moved_after < FAILOVER_WITHIN
    finally:
        frontend.close()
        orders.stop()
