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
cheap: it must not be the bottleneck on two cores. ``--check`` and the harness compare its
ceiling with Debian's ``wrk``.

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
import math
import os
import resource
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "PERCENTILES",
    "Target",
    "closed_loop",
    "cpu_seconds",
    "open_loop",
    "percentiles",
]

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_GRACE = 2.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_TIMERSLACK = 29


def percentiles(
    values_ns: Sequence[int], points: Sequence[float] = PERCENTILES
) -> dict[str, float]:
    """Nearest-rank percentiles of *values_ns*, in microseconds, keyed ``p50``, ``p99.9``…"""
    ordered = sorted(values_ns)
    out: dict[str, float] = {}
    for point in points:
        key = f"p{point:g}"
        if not ordered:
            out[key] = math.nan
            continue
        rank = max(1, math.ceil(point / 100.0 * len(ordered)))
        out[key] = ordered[rank - 1] / 1000.0
    if ordered:
        out["mean"] = sum(ordered) / len(ordered) / 1000.0
        out["max"] = ordered[-1] / 1000.0
    return out


def cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """utime + stime of each pid still alive, in seconds (``/proc/<pid>/stat``)."""
    out: dict[int, float] = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
        out[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return out


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True, slots=True)
class Target:
    """Where the requests go: ``http://host:port/path`` (HTTP/1.1, keep-alive)."""

    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"{url!r}: expected http://host:port/path")
        return cls(parts.hostname, parts.port, parts.path or "/")

    @property
    def request(self) -> bytes:
        return f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode()


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request in flight at a time."""

    def __init__(self, owner: _Load) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.intended = 0
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, intended: int, request: bytes) -> None:
        assert self.transport is not None
        self.intended = intended
        self.busy = True
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length = 0
        marker = head.find(b"content-length:")
        if marker >= 0:
            line_end = head.find(b"\r\n", marker)
            length = int(head[marker + 15 : line_end if line_end >= 0 else None])
        elif b"transfer-encoding: chunked" in head:
            if not self.buffer.endswith(b"0\r\n\r\n"):
                return
            length = len(self.buffer) - end - 4
        if len(self.buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        del self.buffer[: end + 4 + length]
        self.busy = False
        self.owner.done(self, status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.lost(self)


@dataclass
class _Load:
    """The state of one measured run over a pool of connections."""

    target: Target
    max_connections: int
    record_from: int = 0
    latencies: list[int] = field(default_factory=list)
    lags: list[int] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    in_flight: int = 0
    idle: deque[_Connection] = field(default_factory=deque)
    waiting: deque[int] = field(default_factory=deque)
    connections: int = 0
    opening: int = 0
    closed_loop: bool = False
    stop_at: int = 0
    last_done: int = 0
    all_done: asyncio.Event = field(default_factory=asyncio.Event)
    sent_total: int = 0
    openers: set[asyncio.Future[None]] = field(default_factory=set)

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.opening += 1
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(self), self.target.host, self.target.port
            )
        except OSError:
            self.opening -= 1
            self.errors += 1
            if self.waiting:
                self._give_up_one()
            return
        self.opening -= 1
        self.connections += 1
        self.release(conn)

    def _give_up_one(self) -> None:
        self.waiting.popleft()
        self.in_flight -= 1
        self._maybe_done()

    def dispatch(self, intended: int) -> None:
        """Send the request due at *intended* (ns), or queue it for the next free connection."""
        self.in_flight += 1
        self.sent_total += 1
        if self.idle:
            conn = self.idle.popleft()
            if intended >= self.record_from:
                self.lags.append(time.perf_counter_ns() - intended)
            conn.send(intended, self.target.request)
            return
        self.waiting.append(intended)
        if self.connections + self.opening < self.max_connections:
            task = asyncio.ensure_future(self.open())
            self.openers.add(task)
            task.add_done_callback(self.openers.discard)

    def release(self, conn: _Connection) -> None:
        if self.waiting:
            intended = self.waiting.popleft()
            if intended >= self.record_from:
                self.lags.append(time.perf_counter_ns() - intended)
            conn.send(intended, self.target.request)
        elif self.closed_loop and time.perf_counter_ns() < self.stop_at:
            self.in_flight += 1
            self.sent_total += 1
            conn.send(time.perf_counter_ns(), self.target.request)
        else:
            self.idle.append(conn)

    def done(self, conn: _Connection, status: int) -> None:
        now = time.perf_counter_ns()
        self.in_flight -= 1
        if conn.intended >= self.record_from:
            self.latencies.append(now - conn.intended)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.last_done = now
        if status >= 400:
            self.errors += 1
        self.release(conn)
        self._maybe_done()

    def lost(self, conn: _Connection) -> None:
        self.connections -= 1
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        if conn.busy:
            conn.busy = False
            self.in_flight -= 1
            self.errors += 1
            self._maybe_done()

    def _maybe_done(self) -> None:
        if self.in_flight == 0:
            self.all_done.set()

    def close(self) -> None:
        for conn in list(self.idle):
            if conn.transport is not None:
                conn.transport.close()


def _low_timer_slack() -> None:
    """Ask the kernel for 1 µs timer slack on this thread (default 50 µs), best effort."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)


def _pace(loop: asyncio.AbstractEventLoop, load: _Load, t0: int, interval: int, count: int) -> None:
    """Timer thread: hand each request to the loop at its intended time."""
    _low_timer_slack()
    for i in range(count):
        intended = t0 + i * interval
        delay = intended - time.perf_counter_ns()
        if delay > 0:
            time.sleep(delay / 1e9)
        loop.call_soon_threadsafe(load.dispatch, intended)


def _summary(load: _Load, started: int, ended: int, cpu: dict[str, Any]) -> dict[str, Any]:
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
    load = _Load(target, max_connections)
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
    cpu_before, self_before = cpu_seconds(pids), _self_cpu()
    await asyncio.to_thread(pacer.join)
    load.all_done.clear()
    load._maybe_done()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(load.all_done.wait(), grace)
    ended = max(load.last_done, load.record_from + 1)
    cpu_after, self_after = cpu_seconds(pids), _self_cpu()
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
    load = _Load(target, connections, closed_loop=True)
    await asyncio.gather(*(load.open() for _ in range(connections)))
    now = time.perf_counter_ns()
    load.record_from = now + int(warmup * 1e9)
    load.stop_at = load.record_from + int(duration * 1e9)
    for conn in list(load.idle):
        load.idle.remove(conn)
        load.release(conn)
    await asyncio.sleep(warmup)
    cpu_before, self_before = cpu_seconds(pids), _self_cpu()
    await asyncio.sleep(max(0.0, (load.stop_at - time.perf_counter_ns()) / 1e9))
    load.all_done.clear()
    load._maybe_done()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(load.all_done.wait(), DEFAULT_GRACE)
    cpu_after, self_after = cpu_seconds(pids), _self_cpu()
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
