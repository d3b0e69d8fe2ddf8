"""Root rotation across replicas on a real 3-member etcd: a root added on one replica
reaches the snapshots of another's watchers; a replica may sign from the new root."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from meshlib.identity.svid import certificate_fingerprint, load_pem_certificates
from meshlib_control.ca.offline import init_root, issue_intermediate
from meshlib_control.plane import ControlPlane
from meshlib_control.settings import Settings
from tests.etcd_cluster import EtcdCluster

TD = "mesh.local"
KEY = ("orders", "default", None)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    etcd = EtcdCluster(tmp_path_factory.mktemp("etcd"), members=3).start()
    yield etcd
    etcd.stop()


def _plane(tmp: Path, store: str, root: str, name: str) -> ControlPlane:
    """A replica named *name* on *store*, signing with its own intermediate of *root*."""
    if not (tmp / f"root{root}").exists():
        init_root(tmp / f"root{root}", TD, name=f"root {root}")
    inter = tmp / f"int-{name}"
    issue_intermediate(tmp / f"root{root}", inter, TD, name=name)
    return ControlPlane(
        Settings(
            data_dir=tmp / name, store=store, ca_cert=inter / "ca.pem", ca_key=inter / "ca.key"
        )
    )


def test_add_root_on_one_replica_reaches_the_watchers_of_another(
    cluster: EtcdCluster, tmp_path: Path
) -> None:
    """Replica 2 is told by etcd's watch that the bundle changed and wakes its watchers with
    snapshots carrying A and B; a replica signing from B then starts; retiring A from it
    reaches replica 2's snapshots too."""
    store = cluster.store_url + f"/rot-{uuid.uuid4().hex[:8]}/"
    one = _plane(tmp_path, store, "A", "one")
    two = _plane(tmp_path, store, "A", "two")
    three: ControlPlane | None = None

    def roots_seen(plane: ControlPlane) -> list[str]:
        pem = plane.cache.get(KEY).trust_bundle.encode()
        return [certificate_fingerprint(c) for c in load_pem_certificates(pem)]

    async def scenario() -> None:
        nonlocal three
        two.follow_store(asyncio.get_running_loop())
        first = two.cache.get(KEY)
        root_b = init_root(tmp_path / "rootB", TD, name="root B").cert
        pem_b = root_b.public_bytes(serialization.Encoding.PEM).decode()
        one.add_root({"cert": pem_b})
        woken = await two.cache.watch(KEY, first.version, 5.0)
        assert woken is not None and woken.version != first.version
        fp_a = certificate_fingerprint(one.ca.root)
        fp_b = certificate_fingerprint(root_b)
        assert roots_seen(two) == [fp_a, fp_b]
        three = _plane(tmp_path, store, "B", "three")
        assert three.ca_status()["signingRoot"] == fp_b
        three.retire_root({"fingerprint": fp_a})  # three signs from B: allowed there
        assert roots_seen(three) == [fp_b]
        # two still signs from A and cannot serve a bundle without it: it keeps A+B
        # (and logs why) until it is replaced by a replica signing from B.
        two.refresh()
        assert roots_seen(two) == [fp_a, fp_b]

    try:
        asyncio.run(scenario())
    finally:
        for plane in (one, two, three):
            if plane is not None:
                plane.store.close()
