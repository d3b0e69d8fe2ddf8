"""How much the data-plane benchmark measures: its :class:`Profile` and :data:`PROFILES`."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ALL_MODES", "PROFILES", "RUN_MODES", "Profile"]


@dataclass(frozen=True, slots=True)
class Profile:
    """How much to measure; every count and duration is bounded here."""

    name: str
    repeats: int
    modes: tuple[str, ...]
    sequential: int  # requests of the sequential httpx caller (after its warm-up)
    sequential_warmup: int
    one_hop_rounds: int  # the one-hop probe's sync and async callers alternate this often
    rates: tuple[float, ...]  # open-loop request rates, req/s
    duration: float  # seconds measured at each rate
    warmup: float  # seconds sent and not recorded before each rate
    open_connections: int  # at most this many connections to the frontend in open loop
    prime: float  # seconds of closed-loop load at open_connections before the rates
    saturation_connections: int
    saturation_duration: float
    wrk_check: bool  # compare the generator with Debian's wrk on mode (a)


ALL_MODES = (
    "http-a", "http-b", "http-c", "http-d", "http-e", "grpc-a", "grpc-b", "grpc-c", "grpc-d",
)  # fmt: skip
# meshctl run of the plain apps (docs/run.md): in the default profile; the quick one leaves
# them out to keep its time (``--modes http-b,http-run`` picks them).
RUN_MODES = ("http-run", "grpc-run")


PROFILES = {
    "default": Profile(
        name="default",
        repeats=3,
        modes=(*ALL_MODES, *RUN_MODES),
        sequential=400,
        sequential_warmup=100,
        one_hop_rounds=4,
        rates=(50.0, 100.0, 200.0),
        duration=2.0,
        warmup=0.4,
        open_connections=32,
        prime=0.6,
        saturation_connections=32,
        saturation_duration=1.2,
        wrk_check=True,
    ),
    "quick": Profile(
        name="quick",
        repeats=1,
        modes=ALL_MODES,
        sequential=60,
        sequential_warmup=20,
        one_hop_rounds=2,
        rates=(100.0,),
        duration=0.6,
        warmup=0.2,
        open_connections=8,
        prime=0.4,
        saturation_connections=8,
        saturation_duration=0.5,
        wrk_check=False,
    ),
}
