"""Simulated watching instances: the round-tagged policy, agent and light watch loops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.control_plane.settings import TARGET_SERVICE, WATCH_WAIT
from meshlib.errors import ControlPlaneError
from meshlib.policy.engine import PolicyEngine
from meshlib.policy.model import TrafficPolicySpec
from meshlib.policy.snapshot import Snapshot, decode_snapshot
from meshlib.runtime.control_client import ControlClient


def target_policy(round_no: int) -> str:
    """The TrafficPolicy applied in round *round_no*; the round is readable in every snapshot.

    ``connectionPool.maxConnections`` carries ``1000 + round_no``, so a watcher can tell
    which apply a snapshot came from.
    """
    return (
        "apiVersion: meshlib.io/v1\n"
        "kind: TrafficPolicy\n"
        f"metadata: {{name: {TARGET_SERVICE}, namespace: default}}\n"
        "spec:\n"
        f"  service: {TARGET_SERVICE}\n"
        "  routes:\n"
        "  - name: api\n"
        "    match: {path: {prefix: /api/}}\n"
        "    timeout: 2s\n"
        "    retries: {attempts: 2, perTryTimeout: 500ms}\n"
        f"  connectionPool: {{maxConnections: {1000 + round_no}, maxPending: 100}}\n"
    )


def round_of(snapshot: Snapshot) -> int | None:
    """The round whose TrafficPolicy *snapshot* carries, or None."""
    for entry in snapshot.services:
        if entry.name == TARGET_SERVICE and entry.traffic_policy is not None:
            spec = entry.traffic_policy.spec
            if isinstance(spec, TrafficPolicySpec):
                return spec.connection_pool.max_connections - 1000
    return None


@dataclass(slots=True)
class Watcher:
    """One simulated instance: its own client, registration and watch."""

    index: int
    instance_id: str
    client: ControlClient
    version: str = ""
    received: dict[int, tuple[float, float]] = field(default_factory=dict)
    errors: int = 0
    reports_failed: int = 0
    heartbeats: int = 0


@dataclass(slots=True)
class RoundClock:
    """When the current round's apply started, shared by every watcher."""

    started: dict[int, float] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    waiting_for: int = -1
    remaining: int = 0


def registration_body() -> dict[str, Any]:
    # What the agent of a pure client sends (port 0: not an endpoint in anyone's snapshot).
    return {
        "address": "",
        "port": 0,
        "plaintextPort": None,
        "adminPort": None,
        "labels": {},
        "mode": "library",
        "appliedVersion": None,
    }


def _record(
    watcher: Watcher, clock: RoundClock, round_no: int | None, received: float, compiled: float
) -> None:
    if round_no is not None and round_no in clock.started and round_no not in watcher.received:
        watcher.received[round_no] = (received, compiled)
        if round_no == clock.waiting_for:
            clock.remaining -= 1
            if clock.remaining <= 0:
                clock.done.set()


def apply_body(watcher: Watcher, body: dict[str, Any], clock: RoundClock) -> None:
    received = time.perf_counter()
    snapshot = decode_snapshot(body)
    engine = PolicyEngine.compile(snapshot)  # what Agent._install_snapshot_dict does
    compiled = time.perf_counter()
    watcher.version = engine.version
    _record(watcher, clock, round_of(snapshot), received, compiled)


def _round_of_body(body: dict[str, Any]) -> int | None:
    for entry in body.get("services", []):
        policy = entry.get("trafficPolicy")
        if entry.get("name") == TARGET_SERVICE and policy:
            return int(policy["spec"]["connectionPool"]["maxConnections"]) - 1000
    return None


class LightWatch:
    """A minimal HTTP/1.1 long-poll client over one mTLS connection (asyncio streams).

    The "light" client mode: the same request the agent sends, with the same SVID and the
    same check of the control service's SPIFFE ID, but without httpx, decoding or
    compiling, so one process can hold many watchers while spending little CPU on each;
    what remains is the control service's own fan-out time.
    """

    def __init__(self, url: str, context: Any, expected: str) -> None:
        host, _, port = url.removeprefix("https://").rpartition(":")
        self.host, self.port = host, int(port)
        self.context = context
        self.expected = expected
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        from meshlib.integrations.httpx import check_peer

        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.context, server_hostname=self.host
        )
        check_peer(self.writer.get_extra_info("ssl_object"), self.expected, self.host)

    async def watch(self, version: str, wait: float) -> dict[str, Any] | None:
        """``GET /v1/snapshot?version=…&wait=…``: the body on 200, None on 304."""
        if self.writer is None or self.writer.is_closing():
            await self._connect()
        assert self.reader is not None and self.writer is not None
        self.writer.write(
            f"GET /v1/snapshot?version={version}&wait={wait:g} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\nAccept: application/json\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), wait + 10)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
            elif name.strip().lower() == "transfer-encoding":
                raise ControlPlaneError(f"unexpected transfer-encoding {value.strip()}")
        body = await asyncio.wait_for(self.reader.readexactly(length), 10) if length else b""
        if status == 304:
            return None
        if status != 200:
            raise ControlPlaneError(f"control service answered {status}", status=status)
        parsed: dict[str, Any] = json.loads(body)
        return parsed

    async def aclose(self) -> None:
        """Close the connection."""
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()


async def light_watch_loop(
    watcher: Watcher, light: LightWatch, clock: RoundClock, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            body = await light.watch(watcher.version, WATCH_WAIT)
        except (ControlPlaneError, OSError, TimeoutError, asyncio.IncompleteReadError):
            watcher.errors += 1
            await light.aclose()
            light.writer = None
            await asyncio.sleep(0.2)
            continue
        if body is None:
            continue
        received = time.perf_counter()
        watcher.version = str(body["version"])
        _record(watcher, clock, _round_of_body(body), received, received)


async def watch_loop(watcher: Watcher, clock: RoundClock, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            body = await watcher.client.watch(watcher.version, WATCH_WAIT, None)
        except ControlPlaneError:
            watcher.errors += 1
            await asyncio.sleep(0.2)
            continue
        if body is None:
            continue
        apply_body(watcher, body, clock)
        try:  # as the agent: report the applied version (best effort)
            await watcher.client.report(watcher.instance_id, watcher.version, None)
        except ControlPlaneError:
            watcher.reports_failed += 1


async def heartbeat_loop(watcher: Watcher, stop: asyncio.Event, interval: float) -> None:
    # Spread the first beats over one interval, as independently started agents would be.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), random.uniform(0, interval))
    while not stop.is_set():
        try:
            await watcher.client.register(watcher.instance_id, registration_body())
            watcher.heartbeats += 1
        except ControlPlaneError:
            watcher.errors += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def stop_tasks(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    """Tell the watch and heartbeat loops to stop, cancel them and wait until they ended."""
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
