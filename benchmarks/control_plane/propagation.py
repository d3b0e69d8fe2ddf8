"""Propagation: ``apply`` to every one of N watching instances holding the new snapshot."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.control_plane.control import ControlProcess, bootstrap_identity
from benchmarks.control_plane.settings import (
    HEARTBEAT_INTERVAL,
    MESHCTL,
    ROOT,
    SETUP_CONCURRENCY,
    Profile,
)
from benchmarks.control_plane.snapshots import policy_documents
from benchmarks.control_plane.stats import ms, percentiles
from benchmarks.control_plane.watchers import (
    LightWatch,
    RoundClock,
    Watcher,
    apply_body,
    heartbeat_loop,
    light_watch_loop,
    registration_body,
    stop_tasks,
    target_policy,
    watch_loop,
)
from meshlib.runtime.control_client import ControlClient
from meshlib_control.cli import AdminClient


async def _bounded(limit: int, jobs: Sequence[Callable[[], Any]]) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Any]) -> Any:
        async with semaphore:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


def _own_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure_propagation(
    count: int,
    profile: Profile,
    workdir: Path,
    *,
    heartbeats: bool,
    cli_round: bool,
    profile_dir: Path | None = None,
    client: str = "agent",
    background: int = 0,
) -> dict[str, Any]:
    """Start a control service, *count* watchers, apply ``profile.rounds`` times; the figures.

    *client* ``agent``: each watcher is the library's ControlClient, registers, decodes and
    compiles every snapshot and reports it, as the agent does. ``light``: each watcher is a
    :class:`LightWatch` (no registration, no report, no decoding).
    """
    data_dir = workdir / f"control-{count}-{client}-{background}"
    profile_to = None if profile_dir is None else profile_dir / f"control-{count}-{client}.prof"
    lights: list[LightWatch] = []
    control = ControlProcess(data_dir, profile_to=profile_to)
    watchers: list[Watcher] = []
    tasks: list[asyncio.Task[None]] = []
    stop = asyncio.Event()
    admin: AdminClient | None = None
    clock = RoundClock()
    rounds: list[dict[str, Any]] = []
    try:
        control.start()
        admin = AdminClient(data_dir)
        if background:  # a bigger mesh: every watcher's snapshot lists these services too
            docs = "---\n".join(policy_documents(background))
            await asyncio.to_thread(admin.call, "POST", "/v1/admin/resources", content=docs)
        files_dir = workdir / f"tls-{count}-{client}-{background}"
        files_dir.mkdir(mode=0o700)
        n_ids = max(1, min(profile.identities, count))
        setup_started = time.perf_counter()
        identities = [
            await bootstrap_identity(control, admin, f"watcher-{i}", files_dir)
            for i in range(n_ids)
        ]
        for i in range(count):
            ctx = identities[i % n_ids].context
            api = ControlClient(control.url, expected=control.control_id, tls=lambda c=ctx: c)
            watchers.append(Watcher(i, uuid.uuid4().hex[:16], api))

        async def register_and_fetch(w: Watcher) -> None:
            # As the agent boots: register, fetch the first snapshot, then start watching
            # at once (a connection left idle while the others set up would be closed by
            # the server's keep-alive timeout and re-dialled).
            await w.client.register(w.instance_id, registration_body())
            body = await w.client.watch("", 0.0, None)
            if body is not None:
                apply_body(w, body, clock)
            tasks.append(asyncio.create_task(watch_loop(w, clock, stop)))
            if heartbeats:
                tasks.append(asyncio.create_task(heartbeat_loop(w, stop, HEARTBEAT_INTERVAL)))

        async def light_fetch(w: Watcher, light: LightWatch) -> None:
            body = await light.watch("", 0.0)
            if body is not None:
                w.version = str(body["version"])
            tasks.append(asyncio.create_task(light_watch_loop(w, light, clock, stop)))

        if client == "light":
            for i in range(len(watchers)):
                ctx = identities[i % n_ids].context
                lights.append(LightWatch(control.url, ctx, control.control_id))
            await _bounded(
                SETUP_CONCURRENCY,
                [
                    functools.partial(light_fetch, w, lw)
                    for w, lw in zip(watchers, lights, strict=True)
                ],
            )
        else:
            await _bounded(
                SETUP_CONCURRENCY, [functools.partial(register_and_fetch, w) for w in watchers]
            )
        setup_seconds = time.perf_counter() - setup_started
        # Let every long-poll reach the server and park there.
        await asyncio.sleep(profile.settle + count / 1000.0)
        cpu_before = control.cpu_seconds()
        own_before = _own_cpu_seconds()
        wall_before = time.perf_counter()
        total_rounds = profile.rounds + (1 if cli_round else 0)
        for round_no in range(1, total_rounds + 1):
            via_cli = cli_round and round_no == total_rounds
            clock.done = asyncio.Event()
            clock.waiting_for = round_no
            clock.remaining = count
            text = target_policy(round_no)
            started = time.perf_counter()
            clock.started[round_no] = started
            if via_cli:
                policy_file = workdir / f"round-{count}-{round_no}.yaml"
                policy_file.write_text(text)
                cmd = [*MESHCTL, "--data-dir", str(data_dir), "apply", "-f", str(policy_file)]
                proc = await asyncio.create_subprocess_exec(
                    *cmd,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,
                    cwd=ROOT,
                )
                try:
                    _, err = await asyncio.wait_for(proc.communicate(), profile.round_timeout)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
                    raise
                if proc.returncode != 0:
                    raise RuntimeError(f"meshctl apply failed: {err.decode(errors='replace')}")
            else:
                await asyncio.to_thread(admin.call, "POST", "/v1/admin/resources", content=text)
            applied = time.perf_counter() - started
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(clock.done.wait(), profile.round_timeout)
            got = [w.received[round_no] for w in watchers if round_no in w.received]
            rounds.append(
                {
                    "round": round_no,
                    "via": "meshctl apply (subprocess)" if via_cli else "admin API",
                    "apply_call_ms": ms(applied),
                    "received": len(got),
                    "receive_ms": {k: ms(v) for k, v in _lat(got, 0, started).items()},
                    "compiled_ms": {k: ms(v) for k, v in _lat(got, 1, started).items()},
                }
            )
            await asyncio.sleep(profile.settle + count / 2000.0)  # reports land, polls re-park
        cpu_after = control.cpu_seconds()
        own_cpu = _own_cpu_seconds() - own_before
        wall = time.perf_counter() - wall_before
    finally:
        await stop_tasks(stop, tasks)
        for w in watchers:
            with contextlib.suppress(Exception):
                await w.client.aclose()
        for lw in lights:
            await lw.aclose()
        if admin is not None:
            admin.close()
        control.stop()
    api_rounds = [r for r in rounds if r["via"] == "admin API"]
    all_recv: list[float] = []
    all_comp: list[float] = []
    for r in api_rounds:
        started = clock.started[r["round"]]
        for w in watchers:
            if r["round"] in w.received:
                all_recv.append(w.received[r["round"]][0] - started)
                all_comp.append(w.received[r["round"]][1] - started)
    expected = count * len(api_rounds)
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return {
        "watchers": count,
        "client": client,
        "mesh_services": background + 1,
        "identities": max(1, min(profile.identities, count)),
        "rounds": len(api_rounds),
        "heartbeats": heartbeats and client == "agent",
        "setup_seconds": round(setup_seconds, 2),
        "deliveries": len(all_recv),
        "expected_deliveries": expected,
        "all_received": len(all_recv) == expected,
        "receive_ms": {k: ms(v) for k, v in percentiles(all_recv).items() if k != "count"},
        "compiled_ms": {k: ms(v) for k, v in percentiles(all_comp).items() if k != "count"},
        "control_cpu_seconds_during_rounds": None if cpu is None else round(cpu, 2),
        "client_cpu_seconds_during_rounds": round(own_cpu, 2),
        "wall_seconds_of_rounds": round(wall, 2),
        "watch_errors": sum(w.errors for w in watchers),
        "reports_failed": sum(w.reports_failed for w in watchers),
        "heartbeats_sent": sum(w.heartbeats for w in watchers),
        "per_round": rounds,
    }


def _lat(got: Sequence[tuple[float, float]], index: int, started: float) -> dict[str, float]:
    stats = percentiles([g[index] - started for g in got])
    return {k: v for k, v in stats.items() if k != "count"}
