"""Cross-replica propagation: ``apply`` on replica A → watchers of replica B have it.

Two ``meshctl control serve --store etcd://…`` replicas on a real 3-member etcd cluster
(Debian's ``etcd-server``, started here on 127.0.0.1 as the tests do), one CA for both.
N light watchers hold their long-poll on replica B only; each round applies the
round-tagged TrafficPolicy through replica A's admin API. Per watcher and round: the time
from just before the apply call to the new snapshot received from B. The path it times:
A's etcd transaction, etcd's watch event to B, B's rebuild and fan-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.control_plane.control import ControlProcess, bootstrap_identity
from benchmarks.control_plane.settings import SETUP_CONCURRENCY, TRUST_DOMAIN, Profile
from benchmarks.control_plane.stats import ms, percentiles
from benchmarks.control_plane.watchers import (
    LightWatch,
    RoundClock,
    Watcher,
    light_watch_loop,
    stop_tasks,
    target_policy,
)
from meshlib_control.cli import AdminClient

ETCD = os.environ.get("MESH_TEST_ETCD", "/usr/bin/etcd")


def etcd_available() -> bool:
    """True when an etcd binary is installed (``make system-deps``)."""
    return os.path.exists(ETCD) or shutil.which("etcd") is not None


async def measure_replica_propagation(
    count: int, profile: Profile, workdir: Path
) -> dict[str, Any]:
    """Start etcd and two replicas, *count* watchers on B, apply on A; the figures."""
    if not etcd_available():
        return {"watchers": count, "skipped": f"etcd not installed ({ETCD}; make system-deps)"}
    from meshlib_control.ca.authority import CertificateAuthority
    from tests.etcd_cluster import EtcdCluster  # the tests' 3-member cluster on 127.0.0.1

    root = workdir / f"replicas-{count}"
    root.mkdir()
    etcd = EtcdCluster(root / "etcd", members=3)
    CertificateAuthority.load_or_create(root / "ca", TRUST_DOMAIN)
    store = [
        "--store",
        etcd.store_url,
        "--ca-cert",
        str(root / "ca" / "ca.pem"),
        "--ca-key",
        str(root / "ca" / "ca.key"),
    ]
    replicas = [ControlProcess(root / f"replica-{name}", extra=store) for name in "ab"]
    watchers: list[Watcher] = []
    lights: list[LightWatch] = []
    tasks: list[asyncio.Task[None]] = []
    stop = asyncio.Event()
    clock = RoundClock()
    admin: AdminClient | None = None
    latencies: list[float] = []
    rounds: list[dict[str, Any]] = []
    try:
        etcd.start()
        for replica in replicas:
            replica.start()
        a, b = replicas
        admin = AdminClient(a.data_dir)
        files_dir = root / "tls"
        files_dir.mkdir(mode=0o700)
        n_ids = max(1, min(profile.identities, count))
        # Tokens are made on A and spent on B: the registry is one.
        identities = [
            await bootstrap_identity(b, admin, f"watcher-{i}", files_dir) for i in range(n_ids)
        ]
        semaphore = asyncio.Semaphore(SETUP_CONCURRENCY)

        async def start(i: int) -> None:
            async with semaphore:
                watcher = Watcher(i, uuid.uuid4().hex[:16], None)  # type: ignore[arg-type]
                light = LightWatch(b.url, identities[i % n_ids].context, b.control_id)
                body = await light.watch("", 0.0)
                if body is not None:
                    watcher.version = str(body["version"])
                watchers.append(watcher)
                lights.append(light)
                tasks.append(asyncio.create_task(light_watch_loop(watcher, light, clock, stop)))

        await asyncio.gather(*(start(i) for i in range(count)))
        await asyncio.sleep(profile.settle + count / 1000.0)
        for round_no in range(1, profile.rounds + 1):
            clock.done = asyncio.Event()
            clock.waiting_for = round_no
            clock.remaining = count
            started = time.perf_counter()
            clock.started[round_no] = started
            text = target_policy(round_no)
            await asyncio.to_thread(admin.call, "POST", "/v1/admin/resources", content=text)
            applied = time.perf_counter() - started
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(clock.done.wait(), profile.round_timeout)
            got = [w.received[round_no][0] - started for w in watchers if round_no in w.received]
            latencies.extend(got)
            stats = percentiles(got)
            rounds.append(
                {
                    "round": round_no,
                    "apply_call_ms": ms(applied),
                    "received": len(got),
                    "receive_ms": {k: ms(v) for k, v in stats.items() if k != "count"},
                }
            )
            await asyncio.sleep(profile.settle)
    finally:
        await stop_tasks(stop, tasks)
        for light in lights:
            await light.aclose()
        if admin is not None:
            admin.close()
        for replica in replicas:
            replica.stop()
        etcd.stop()
    expected = count * profile.rounds
    return {
        "watchers": count,
        "replicas": 2,
        "etcd_members": 3,
        "rounds": profile.rounds,
        "deliveries": len(latencies),
        "expected_deliveries": expected,
        "all_received": len(latencies) == expected,
        "receive_ms": {k: ms(v) for k, v in percentiles(latencies).items() if k != "count"},
        "watch_errors": sum(w.errors for w in watchers),
        "per_round": rounds,
    }
