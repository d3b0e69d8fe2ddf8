"""One mode's measurement: start its topology, run every phase, record CPU and memory.

The phases run in the :class:`LoadGen` worker process (``python -m benchmarks.loadgen
worker``): the sequential caller via the frontend, the one-hop probe (sync and async
callers), the open-loop rates, the closed-loop saturation and, on mode (a), the check of
the generator against Debian's ``wrk``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.control_service import Control
from benchmarks.modes import Mode
from benchmarks.processes import PYTHON, ROOT, Fleet, die_with_parent, rss_kib
from benchmarks.profiles import Profile
from benchmarks.topology import Topology, start_topology

__all__ = ["LoadGen", "measure_mode"]


class LoadGen:
    """The ``benchmarks.loadgen`` worker process: one JSON command in, one JSON line out."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "benchmarks.loadgen", "worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            text=True,
            preexec_fn=die_with_parent,  # the harness spawns from its one thread
        )

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the load generator exited")
        result: dict[str, Any] = json.loads(line)
        if "error" in result:
            raise RuntimeError(f"load generator: {result['error']}")
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _by_instance(
    cpu: dict[str, float], pids: dict[str, list[int]], sidecars: list[int], envoys: list[int]
) -> dict[str, float]:
    """CPU seconds per instance, of the sidecars (agents + Envoys), of the Envoys alone."""
    out = {name: 0.0 for name in pids}
    out["sidecars"] = 0.0
    out["envoys"] = 0.0
    for pid_text, seconds in cpu.items():
        pid = int(pid_text)
        for name, members in pids.items():
            if pid in members:
                out[name] += seconds
        if pid in sidecars:
            out["sidecars"] += seconds
        if pid in envoys:
            out["envoys"] += seconds
    out["total"] = sum(out[name] for name in pids)
    return out


def _memory(topology: Topology) -> dict[str, Any]:
    memory: dict[str, Any] = {}
    sidecar_pids = set(topology.sidecar_pids())
    for name, pids in topology.pids().items():
        rows = []
        for pid in pids:
            rss, pss = rss_kib(pid)
            rows.append({"pid": pid, "comm": _comm(pid), "rss_kib": rss, "pss_kib": pss,
                         "sidecar": pid in sidecar_pids})  # fmt: skip
        memory[name] = {
            "rss_kib": sum(r["rss_kib"] for r in rows),
            "pss_kib": sum(r["pss_kib"] for r in rows),
            "sidecar_rss_kib": sum(r["rss_kib"] for r in rows if r["sidecar"]),
            "app_rss_kib": sum(r["rss_kib"] for r in rows if not r["sidecar"]),
            "processes": rows,
        }
    return memory


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return "?"


def _wrk(url: str, connections: int, duration: float) -> dict[str, Any] | None:
    """Debian's wrk, closed loop, 1 thread: its throughput, for checking our generator."""
    binary = shutil.which("wrk")
    if binary is None:
        return None
    result = subprocess.run(
        [binary, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=False,
    )
    match = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    latency = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)$", result.stdout, re.MULTILINE))
    return {
        "connections": connections,
        "throughput": float(match.group(1)) if match else None,
        "latency_closed_loop": latency,
        "returncode": result.returncode,
    }


def measure_mode(
    fleet: Fleet,
    control: Control,
    loadgen: LoadGen,
    mode: Mode,
    profile: Profile,
    run_dir: Path,
    log: Any,
    settle: Callable[[], None],
) -> tuple[dict[str, Any], Callable[[], None]]:
    """Start *mode*'s processes, measure everything once, and begin stopping them.

    *settle* finishes the previous mode's stop: called once this mode's processes are up
    (their start overlaps the previous stop) and before anything is measured. Returns the
    record and the callable that finishes this mode's stop.
    """
    started = time.monotonic()
    try:
        topology = start_topology(fleet, control, mode, run_dir)
    finally:
        settle()
    record: dict[str, Any] = {"mode": mode.id, "started_at": datetime.now(UTC).isoformat()}
    measured = False
    try:
        record["startup_s"] = time.monotonic() - started
        pids = topology.pids()
        sidecars = topology.sidecar_pids()
        record["comm"] = {str(pid): _comm(pid) for members in pids.values() for pid in members}
        envoys = [pid for pid in sidecars if record["comm"].get(str(pid)) == "envoy"]
        every_pid = sorted({pid for members in pids.values() for pid in members})
        record["pids"] = pids
        # The frontend's own call counters; "failed" before this point were readiness probes.
        record["frontend_calls_at_ready"] = _frontend_stats(topology)
        record["sequential"] = loadgen.ask(
            kind="sequential",
            url=topology.url,
            requests=profile.sequential,
            warmup=profile.sequential_warmup,
        )
        log(f"    sequential p50 {record['sequential']['latency_us']['p50']:.0f} µs")
        if topology.direct is not None:
            # The issue's own method: sequential callers straight through the hop under
            # test, an httpx.Client and an httpx.AsyncClient in interleaved rounds.
            probe = loadgen.ask(
                kind="one_hop", requests=profile.sequential, warmup=profile.sequential_warmup,
                rounds=profile.one_hop_rounds, **topology.direct,
            )  # fmt: skip
            record["sequential_direct"] = probe["sync"]
            record["sequential_direct_async"] = probe["async"]
            log(
                f"    one hop p50 {probe['sync']['latency_us']['p50']:.0f} µs (sync), "
                f"{probe['async']['latency_us']['p50']:.0f} µs (async)"
            )
        # Fill the frontend's upstream pool to the concurrency the rates will use, so every
        # mode is measured warm (a cold pool's connection cost is reported apart).
        loadgen.ask(
            kind="closed", url=topology.url, connections=profile.open_connections,
            duration=profile.prime, warmup=0.0, pids=[],
        )  # fmt: skip
        rates = []
        for rate in profile.rates:
            result = loadgen.ask(
                kind="open", url=topology.url, rate=rate, duration=profile.duration,
                warmup=profile.warmup, pids=every_pid, max_connections=profile.open_connections,
            )  # fmt: skip
            result["cpu_by_pid"] = result.pop("cpu_s")
            result["cpu"] = _by_instance(result["cpu_by_pid"], pids, sidecars, envoys)
            rates.append(result)
            log(
                f"    {rate:g}/s: p50 {result['latency_us']['p50']:.0f} µs p99 "
                f"{result['latency_us']['p99']:.0f} µs, {result['throughput']:.0f}/s, "
                f"cpu {result['cpu']['total'] / max(result['completed'], 1) * 1e6:.0f} ms/1k"
            )
        record["rates"] = rates
        record["memory"] = _memory(topology)
        saturation = loadgen.ask(
            kind="closed", url=topology.url, connections=profile.saturation_connections,
            duration=profile.saturation_duration, warmup=profile.warmup, pids=every_pid,
        )  # fmt: skip
        saturation["cpu_by_pid"] = saturation.pop("cpu_s")
        saturation["cpu"] = _by_instance(saturation["cpu_by_pid"], pids, sidecars, envoys)
        record["saturation"] = saturation
        log(f"    saturation {saturation['throughput']:.0f}/s")
        if profile.wrk_check and mode.id == "http-a":
            record["generator_check"] = _generator_check(loadgen, topology, profile)
        record["frontend_calls"] = _frontend_stats(topology)
        measured = True
    finally:
        children = topology.children()
        fleet.terminate(children)
        if not measured:
            fleet.stop(children)
    record["measure_s"] = time.monotonic() - started

    def finish() -> None:
        fleet.stop(children)
        record["exit_stats"] = {
            name: json.loads(path.read_text()) for name, path in topology.stats_files.items()
            if path.exists()
        }  # fmt: skip

    return record, finish


def _frontend_stats(topology: Topology) -> dict[str, Any]:
    import httpx

    url = topology.url.replace("/call", "/bench/stats")
    try:
        return dict(httpx.get(url, timeout=5).json())
    except (httpx.HTTPError, ValueError) as exc:
        return {"error": str(exc)}


def _generator_check(loadgen: LoadGen, topology: Topology, profile: Profile) -> dict[str, Any]:
    """Our generator's closed-loop ceiling vs wrk's, on the frontend and the bare backend."""
    check: dict[str, Any] = {}
    targets = {"frontend": topology.url, "backend_direct": topology.backend_url}
    for name, url in targets.items():
        if url is None:
            continue
        wrk = _wrk(url, profile.saturation_connections, profile.saturation_duration)
        ours = loadgen.ask(
            kind="closed", url=url, connections=profile.saturation_connections,
            duration=profile.saturation_duration, warmup=profile.warmup, pids=[],
        )  # fmt: skip
        check[name] = {
            "loadgen_throughput": ours["throughput"],
            "loadgen_cpu_per_request_us": ours["loadgen_cpu_s"] / max(ours["completed"], 1) * 1e6,
            "loadgen_cpu_utilisation": ours["loadgen_cpu_s"] / ours["window_s"],
            "wrk": wrk,
        }
    return check
