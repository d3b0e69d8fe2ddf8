"""What the control-plane benchmark measures: its profile, constants and machine line."""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import document

ROOT = Path(__file__).resolve().parents[2]
MESHCTL = [sys.executable, "-m", "meshlib_control.cli"]
TRUST_DOMAIN = "mesh.local"
TARGET_SERVICE = "bench-target"
CONTROL_START_TIMEOUT = 40.0
SETUP_CONCURRENCY = 32
HEARTBEAT_INTERVAL = 5.0  # the agent's default (meshlib.config.DEFAULT_HEARTBEAT_INTERVAL)
WATCH_WAIT = 25.0  # the agent's default long-poll wait
TARGET_P99_SECONDS = 1.0
CACHE_REBUILD_BUDGET = 8.0  # seconds of snapshot rebuilds per mesh size, at most


@dataclass(frozen=True, slots=True)
class Profile:
    """How much to measure; every count and wait here is an upper bound."""

    watcher_counts: tuple[int, ...] = (100, 1000)
    rounds: int = 5
    identities: int = 10
    round_timeout: float = 30.0
    settle: float = 1.5
    csr_count: int = 400
    csr_concurrency: int = 8
    csr_time_cap: float = 30.0
    mesh_sizes: tuple[int, ...] = (10, 100, 1000)
    endpoints_per_service: int = 3
    scoped_dependencies: int = 3
    size_repeats: int = 5
    cache_keys_cap: int = 50
    registry_sizes: tuple[int, ...] = (100, 1000)
    big_mesh_services: int = 100
    big_mesh_watchers: tuple[int, ...] = (100,)
    big_mesh_rounds: int = 3
    replica_watchers: tuple[int, ...] = (100, 1000)  # on replica B, applies on replica A

    @classmethod
    def quick(cls) -> Profile:
        """The smoke-test profile: a few seconds per part."""
        return cls(
            watcher_counts=(20,),
            rounds=2,
            identities=2,
            round_timeout=10.0,
            settle=0.5,
            csr_count=20,
            csr_concurrency=4,
            csr_time_cap=5.0,
            mesh_sizes=(10, 100),
            size_repeats=2,
            cache_keys_cap=5,
            registry_sizes=(50,),
            big_mesh_services=10,
            big_mesh_watchers=(10,),
            big_mesh_rounds=1,
            replica_watchers=(10,),
        )


def machine_info() -> dict[str, Any]:
    """What the figures were measured on, with the Python implementation second."""
    info = document.machine_info()
    # Kept second, as in every control_plane.json so far, so the key order stays put.
    return {
        "python": info.pop("python"),
        "implementation": platform.python_implementation(),
        **info,
    }
