"""Registration: in-process ``ControlPlane.register`` against registry size."""

from __future__ import annotations

import functools
import statistics
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks.control_plane.settings import Profile
from benchmarks.control_plane.stats import median_time, ms
from benchmarks.control_plane.watchers import registration_body
from meshlib.identity.spiffe import SpiffeId


def measure_registration(profile: Profile, workdir: Path) -> list[dict[str, Any]]:
    """In-process ``ControlPlane.register`` of new instances (no HTTP), against registry size.

    Every new registration refreshes the snapshot cache, which re-reads the whole instance
    table (``ControlPlane.state``); this shows how that grows with the registry.
    """
    from meshlib_control.plane import ControlPlane
    from meshlib_control.settings import Settings

    rows: list[dict[str, Any]] = []
    for size in profile.registry_sizes:
        plane = ControlPlane(
            Settings(data_dir=workdir / f"plane-reg-{size}", instance_ttl=timedelta(hours=1))
        )
        try:
            peer = SpiffeId.for_service(plane.trust_domain, "default", "watcher")
            times: list[float] = []
            for i in range(size):
                started = time.perf_counter()
                plane.register(f"{i:016x}", registration_body(), peer)
                times.append(time.perf_counter() - started)
            tail = times[-max(1, size // 10) :]
            state_s, _state = median_time(plane.state, 3)
            heartbeat_s, _ = median_time(
                functools.partial(plane.register, f"{0:016x}", registration_body(), peer), 5
            )
            rows.append(
                {
                    "instances": size,
                    "register_all_seconds": round(sum(times), 2),
                    "new_registration_ms_at_end": ms(statistics.mean(tail)),
                    "state_read_ms": ms(state_s),
                    "heartbeat_ms": ms(heartbeat_s),
                }
            )
        finally:
            plane.store.close()
    return rows
