"""An Envoy sidecar fails over between control replicas: its xds_cluster lists them all.

The replicas, the etcd cluster and the traffic are those of
:mod:`tests.integration.test_control_failover`; here each replica also serves ADS
(``--xds-listen``), and the workload is a plain app behind ``meshctl sidecar``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.integration.harness import Service, free_port, stop_all, wait_for
from tests.integration.sidecars import SidecarService, envoy_available
from tests.integration.test_control_failover import (
    FAILOVER_WITHIN,
    LEASE,
    PROBE_POLICY,
    Traffic,
    etcd,
    replicas,
    start_all,
    store,
    urls,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not envoy_available(), reason="envoy binary not installed ([sidecar])"),
]

__all__ = ["etcd"]  # the module-scoped cluster fixture, shared by this module's tests


def _acked(nodes: list[dict[str, Any]]) -> dict[str, str | None]:
    """The version the one connected Envoy ACKed per type; empty until it ACKed every type."""
    if len(nodes) != 1:
        return {}
    versions = {kind: t["ackedVersion"] for kind, t in nodes[0]["types"].items()}
    return versions if versions and all(versions.values()) else {}


def _ads_ports(sidecar: Any) -> list[int]:
    """The control replicas' ADS ports Envoy holds a connection to (``/clusters``)."""
    ports = []
    for line in sidecar.envoy_admin("/clusters").text.splitlines():
        cluster, _, rest = line.partition("::")
        address, _, stat = rest.partition("::")
        if cluster == "xds_cluster" and stat.startswith("cx_active::") and stat[11:] != "0":
            ports.append(int(address.rsplit(":", 1)[1]))
    return ports


def _config_changes(sidecar: Any) -> dict[str, int]:
    """Envoy's counters of listeners and clusters added, modified or removed over xDS."""
    wanted = ("listener_added", "listener_modified", "listener_removed")
    wanted += ("cluster_added", "cluster_modified", "cluster_removed")
    text = sidecar.envoy_admin("/stats?filter=(listener_manager|cluster_manager)\\.").text
    counts = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if name.rsplit(".", 1)[-1] in wanted:
            counts[name] = int(value)
    assert len(counts) == len(wanted), text
    return counts


def test_envoy_sidecar_fails_over_to_the_next_replica(tmp_path, etcd):
    """The sidecar's Envoy lists every replica's ADS server; SIGKILL the one it streams from:
    Envoy reconnects to the next within seconds, serves on, and takes a change applied on a
    survivor."""
    group = replicas(tmp_path, store(etcd, tmp_path), "--xds-listen", "127.0.0.1:0")
    for member in group:  # fixed ports: the test checks Envoy's bootstrap lists them
        at = member.process.args.index("--xds-listen")
        member.process.args[at + 1] = f"127.0.0.1:{free_port()}"
    first, second, third = group
    orders = frontend = None
    try:
        start_all(group)
        orders = Service(first, "orders", tmp_path, env={"MESH_CONTROL_URL": urls(group)})
        orders.start()
        frontend = SidecarService(first, "frontend", tmp_path)
        # `meshctl sidecar --control A --control B,C` instead of `meshctl --control A sidecar`.
        args = frontend.sidecar.process.args
        at = args.index("--control")
        del args[at : at + 2]
        args += ["--control", first.url, "--control", f"{second.url},{third.url}"]
        frontend.start()
        sidecar = frontend.sidecar
        bootstrap = json.loads((sidecar.data_dir / "sidecar" / "envoy-bootstrap.json").read_text())
        (cluster,) = bootstrap["static_resources"]["clusters"]
        priorities = [
            (
                e["priority"],
                e["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"],
            )
            for e in cluster["load_assignment"]["endpoints"]
        ]
        xds_ports = [
            int(r.process.args[r.process.args.index("--xds-listen") + 1].rsplit(":", 1)[1])
            for r in group
        ]
        assert priorities == list(enumerate(xds_ports))
        wait_for(
            lambda: sidecar.get("orders", "/items/1").status_code == 200, 20, "orders via Envoy"
        )
        assert _ads_ports(sidecar) == [xds_ports[0]]  # the first priority, while it is up
        acked = wait_for(lambda: _acked(first.connected()), 10, "Envoy's ACKs on the first")
        changes = _config_changes(sidecar)

        def call(i: int) -> int:
            return int(sidecar.get("orders", f"/items/{i}", timeout=5).status_code)

        with Traffic(call) as traffic:
            time.sleep(0.5)
            first.kill()
            killed = time.monotonic()
            # Timed on Envoy's own admin page (cheap to poll), then confirmed by the replica.
            wait_for(
                lambda: _ads_ports(sidecar) == [xds_ports[1]],
                FAILOVER_WITHIN,
                "Envoy's ADS connection to the second replica",
                interval=0.05,
            )
            moved_after = time.monotonic() - killed
            wait_for(
                second.connected,
                5,
                "the second replica to see the sidecar's ADS stream",
                interval=0.2,
            )
            assert third.connected() == []
            # The survivor serves the versions Envoy holds: it ACKs the same ones again and
            # rebuilds no listener and no cluster.
            wait_for(
                lambda: _acked(second.connected()) == acked, 5, "the same versions ACKed again"
            )
            assert _config_changes(sidecar) == changes
            third.apply(PROBE_POLICY)
            wait_for(
                lambda: sidecar.get("orders", "/p", headers={"x-probe": "1"}).status_code == 418,
                10,
                "the change from the survivor applied by Envoy",
                interval=0.2,
            )
            # The sidecar agent moved too: its heartbeats keep it live past the lease.
            time.sleep(max(0.0, LEASE + 1 - (time.monotonic() - killed)))
            live = [i for i in second.instances() if i["service"] == "frontend"]
            assert live and live[0]["mode"] == "sidecar", live
            moved = f"control service at {first.url} stopped answering; now using {second.url}"
            assert moved in sidecar.process.output()
        assert traffic.failures == [], traffic.failures[:5]
        assert traffic.answered_between(0, killed) >= 2
        assert traffic.answered_between(killed, killed + moved_after + 1) >= 2
        assert traffic.answered_between(killed + moved_after + 1, time.monotonic()) >= 5
        assert moved_after < FAILOVER_WITHIN
    finally:
        stop_all([*(frontend.processes if frontend else []), *([orders.process] if orders else [])])
        for member in group:
            member.stop()
