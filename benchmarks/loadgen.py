"""A lean load generator: open-loop constant rate, closed-loop saturation; sequential httpx.

Open loop, corrected for coordinated omission: request *i* is due at ``t0 + i / rate``,
whether or not earlier ones have answered, and its latency is measured from that intended
time, so a stall of the server shows up in every request it delayed (as wrk2 does). The
schedule is kept by a timer thread with a 1 µs timer slack (``time.sleep`` is
``clock_nanosleep``), which hands each due request to the event loop; the loop writes it on
an idle keep-alive connection (opening one more when none is idle, up to a bound). The lag
between the intended and the actual send is recorded too, so the generator's own
contribution is visible.

Raw sockets (``asyncio.Protocol``) and a hand-written HTTP/1.1 request keep the generator
cheap: it must not be the bottleneck on two cores (:mod:`benchmarks.connections`; the
percentiles and CPU readings are :mod:`benchmarks.sampling`'s). ``--check`` and the
harness compare its ceiling with Debian's ``wrk``.

Run as a worker (``python -m benchmarks.loadgen worker``), it reads one JSON command per line
on stdin and answers one JSON line per command; it also reads the CPU time of the pids it
is given at the exact edges of each measurement window (``/proc/<pid>/stat``). Its
``sequential`` and ``one_hop`` commands run the httpx callers of :mod:`benchmarks.sequential`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.connections import LoadState, Target
from benchmarks.sampling import PERCENTILES, cpu_seconds, percentiles, self_cpu

__all__ = [  # the generator's public surface (percentiles and Target live next door)
    "PERCENTILES",
    "Target",
    "closed_loop",
    "cpu_seconds",
    "open_loop",
    "percentiles",
]

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_GRACE = 2.0
PR_SET_TIMERSLACK = 29


def _low_timer_slack() -> None:
    """Ask the kernel for 1 µs timer slack on this thread (default 50 µs), best effort."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)


def _pace(
    loop: asyncio.AbstractEventLoop, load: LoadState, t0: int, interval: int, count: int
) -> None:
    """Timer thread: hand each request to the loop at its intended time."""
    _low_timer_slack()
    for i in range(count):
        intended = t0 + i * interval
        delay = intended - time.perf_counter_ns()
        if delay > 0:
            time.sleep(delay / 1e9)
        loop.call_soon_threadsafe(load.dispatch, intended)


def _summary(load: LoadState, started: int, ended: int, cpu: dict[str, Any]) -> dict[str, Any]:
    completed = len(load.latencies)
    window = max(ended - started, 1) / 1e9
    return {
        "completed": completed,
        "errors": load.errors,
        "statuses": {str(k): v for k, v in sorted(load.statuses.items())},
        "connections_opened": load.connections,
        "throughput": completed / window,
        "window_s": window,
        "latency_us": percentiles(load.latencies),
        "send_lag_us": percentiles(load.lags),
        **cpu,
    }


async def open_loop(
    target: Target,
    *,
    rate: float,
    duration: float,
    warmup: float = 0.5,
    pids: Sequence[int] = (),
    initial_connections: int = 8,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    grace: float = DEFAULT_GRACE,
) -> dict[str, Any]:
    """Constant *rate* for *warmup* + *duration* seconds; latency from the intended time."""
    load = LoadState(target, max_connections)
    await asyncio.gather(*(load.open() for _ in range(initial_connections)))
    loop = asyncio.get_running_loop()
    interval = int(1e9 / rate)
    warm = int(warmup * rate)
    count = warm + int(duration * rate)
    t0 = time.perf_counter_ns() + 20_000_000
    load.record_from = t0 + warm * interval
    pacer = threading.Thread(
        target=_pace, args=(loop, load, t0, interval, count), name="pacer", daemon=True
    )
    pacer.start()
    await asyncio.sleep(max(0.0, (load.record_from - time.perf_counter_ns()) / 1e9))
    cpu_before, self_before = cpu_seconds(pids), self_cpu()
    await asyncio.to_thread(pacer.join)
    load.all_done.clear()
    load.maybe_done()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(load.all_done.wait(), grace)
    ended = max(load.last_done, load.record_from + 1)
    cpu_after, self_after = cpu_seconds(pids), self_cpu()
    incomplete = load.in_flight
    load.close()
    result = _summary(
        load,
        load.record_from,
        ended,
        {
            "cpu_s": _cpu_delta(cpu_before, cpu_after),
            "loadgen_cpu_s": self_after - self_before,
        },
    )
    result.update(
        {"kind": "open", "rate": rate, "intended": count - warm, "incomplete": incomplete}
    )
    return result


async def closed_loop(
    target: Target,
    *,
    connections: int,
    duration: float,
    warmup: float = 0.5,
    pids: Sequence[int] = (),
) -> dict[str, Any]:
    """*connections* callers, each sending its next request when the last one answered."""
    load = LoadState(target, connections, closed_loop=True)
    await asyncio.gather(*(load.open() for _ in range(connections)))
    now = time.perf_counter_ns()
    load.record_from = now + int(warmup * 1e9)
    load.stop_at = load.record_from + int(duration * 1e9)
    for conn in list(load.idle):
        load.idle.remove(conn)
        load.release(conn)
    await asyncio.sleep(warmup)
    cpu_before, self_before = cpu_seconds(pids), self_cpu()
    await asyncio.sleep(max(0.0, (load.stop_at - time.perf_counter_ns()) / 1e9))
    load.all_done.clear()
    load.maybe_done()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(load.all_done.wait(), DEFAULT_GRACE)
    cpu_after, self_after = cpu_seconds(pids), self_cpu()
    load.close()
    result = _summary(
        load,
        load.record_from,
        max(load.last_done, load.record_from + 1),
        {
            "cpu_s": _cpu_delta(cpu_before, cpu_after),
            "loadgen_cpu_s": self_after - self_before,
        },
    )
    result.update({"kind": "closed", "connections": connections})
    return result


def _cpu_delta(before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
    return {str(pid): after[pid] - before[pid] for pid in after if pid in before}


async def _worker() -> None:
    """Answer JSON commands from stdin, one per line, until EOF."""
    loop = asyncio.get_running_loop()
    sys.setswitchinterval(0.0002)  # the pacer thread must get the GIL back promptly
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        command = json.loads(line)
        kind = command.pop("kind")
        try:
            if kind == "open":
                target = Target.parse(command.pop("url"))
                result = await open_loop(target, **command)
            elif kind == "closed":
                target = Target.parse(command.pop("url"))
                result = await closed_loop(target, **command)
            elif kind in ("sequential", "one_hop"):
                from benchmarks import sequential  # httpx (and meshlib) only when asked

                call: Callable[..., dict[str, Any]] = (
                    sequential.sequential if kind == "sequential" else sequential.one_hop
                )
                result = await asyncio.to_thread(call, command.pop("url"), **command)
            else:
                result = {"error": f"unknown command {kind!r}"}
        except Exception as exc:  # reported to the harness, which fails the phase
            result = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="answer JSON commands on stdin (used by benchmarks.run)")
    one = sub.add_parser("open", help="one open-loop run at a constant rate")
    one.add_argument("url")
    one.add_argument("--rate", type=float, required=True)
    one.add_argument("--duration", type=float, default=5.0)
    closed = sub.add_parser("closed", help="one closed-loop (saturation) run")
    closed.add_argument("url")
    closed.add_argument("--connections", type=int, default=32)
    closed.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.command == "worker":
        asyncio.run(_worker())
    elif args.command == "open":
        sys.setswitchinterval(0.0002)
        result = asyncio.run(
            open_loop(Target.parse(args.url), rate=args.rate, duration=args.duration)
        )
        print(json.dumps(result, indent=2))
    else:
        result = asyncio.run(
            closed_loop(
                Target.parse(args.url), connections=args.connections, duration=args.duration
            )
        )
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
