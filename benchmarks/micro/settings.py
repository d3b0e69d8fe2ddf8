"""What the micro-benchmark measures: its profile, constants and machine line."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks import document

ROOT = Path(__file__).resolve().parents[2]
TRUST_DOMAIN = "mesh.local"
REQUEST_BYTES = 300
RESPONSE_BYTES = 1024
SERVER_START_TIMEOUT = 30.0
PATH = "/api/items/42"


@dataclass(frozen=True, slots=True)
class Profile:
    """Iteration counts; every loop is bounded by them (and by a time cap per item)."""

    iterations: int = 20_000
    repeats: int = 7
    item_time_cap: float = 6.0
    handshakes: int = 300
    echo_requests: int = 3_000
    path_requests: int = 2_000
    path_repeats: int = 5
    warmup: int = 200
    profile_requests: int = 2_000
    steps_requests: int = 300  # interpreter steps are exact: a few hundred requests suffice

    @classmethod
    def quick(cls) -> Profile:
        """The smoke-test profile (a few seconds)."""
        return cls(
            iterations=500,
            repeats=3,
            item_time_cap=0.5,
            handshakes=20,
            echo_requests=200,
            path_requests=100,
            path_repeats=2,
            warmup=20,
            profile_requests=100,
            steps_requests=30,
        )


def machine_info() -> dict[str, Any]:
    """What the figures were measured on, with the TLS and HTTP libraries' versions."""
    return document.machine_info(openssl=ssl.OPENSSL_VERSION, httpx=httpx.__version__)
