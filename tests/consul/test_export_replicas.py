"""Two control replicas on one etcd store export to one (FAKE) Consul agent: idempotent
writes from both give one registration per instance, without flapping."""

from __future__ import annotations

import json
import time
from pathlib import Path

from meshlib_control.ca.authority import CertificateAuthority
from tests.consul.fake_consul import FakeConsul
from tests.etcd_cluster import EtcdCluster
from tests.integration.harness import Control, Service, wait_for


def _export_check(control: Control) -> dict[str, str]:
    checks = json.loads(control.meshctl("check", "-o", "json").stdout)
    return next(c for c in checks if c["name"] == "consul export")


def test_two_replicas_converge_on_one_registration(tmp_path: Path, fake_consul: FakeConsul):
    """An instance registered through replica A is in Consul once, both replicas report it,
    nothing is deregistered while it lives, and it goes when it leaves."""
    etcd = EtcdCluster(tmp_path / "etcd", members=1).start()
    ca_dir = tmp_path / "ca"
    CertificateAuthority.load_or_create(ca_dir, "mesh.local")
    flags = ["--store", etcd.store_url, "--ca-cert", str(ca_dir / "ca.pem"),
             "--ca-key", str(ca_dir / "ca.key"), "--consul", fake_consul.url,
             "--consul-token", "s3cret"]  # fmt: skip
    replicas = [Control(tmp_path / f"r{i}" / "data", *flags) for i in range(2)]
    for replica in replicas:
        replica.data_dir.parent.mkdir(parents=True)
    service: Service | None = None
    try:
        for replica in replicas:
            replica.start()
        service = Service(replicas[0], "orders", tmp_path).start()
        replicas[1].wait_serving("orders")

        def ours() -> list[str]:
            return [s for s in fake_consul.services if s.startswith("meshlib-")]

        wait_for(lambda: len(ours()) == 1, 10, "one registration")
        for replica in replicas:
            wait_for(
                lambda r=replica: "1 instance(s) registered" in _export_check(r)["message"],
                10,
                "both replicas exporting it",
            )
        time.sleep(2)  # both replicas sync at least once more
        assert len(ours()) == 1
        assert not [p for m, p in fake_consul.requests if "deregister" in p]
        (sid,) = ours()
        assert fake_consul.status[sid] == "passing"
        service.stop()
        wait_for(lambda: not ours(), 10, "the deregistration")
    finally:
        if service is not None:
            service.stop()
        for replica in replicas:
            replica.stop()
        etcd.stop()
