"""The control-plane benchmark's run and command line (``python -m benchmarks.control_plane``)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import document
from benchmarks.control_plane.propagation import measure_propagation
from benchmarks.control_plane.registration import measure_registration
from benchmarks.control_plane.replicas import measure_replica_propagation
from benchmarks.control_plane.report import plot, render_markdown
from benchmarks.control_plane.settings import TARGET_P99_SECONDS, Profile, machine_info
from benchmarks.control_plane.signing import measure_signing
from benchmarks.control_plane.snapshots import measure_snapshots

PARTS = ("propagation", "replicas", "signing", "registration", "snapshots")


def _raise_fd_limit(wanted: int) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def run(
    profile: Profile,
    *,
    quick: bool,
    heartbeats: bool = False,
    cli_round: bool = True,
    profile_dir: Path | None = None,
    parts: Sequence[str] = PARTS,
    clients: Sequence[str] = ("agent", "light"),
) -> dict[str, Any]:
    """Run every part; returns the result document."""
    _raise_fd_limit(max(4096, 4 * max(profile.watcher_counts) + 256))
    workdir = Path(tempfile.mkdtemp(prefix="meshlib-cp-bench-"))
    os.chmod(workdir, 0o700)
    started = time.perf_counter()
    try:
        result: dict[str, Any] = {
            **document.new_document("control_plane", profile, quick=quick, machine=machine_info()),
            "target_p99_seconds": TARGET_P99_SECONDS,
            "snapshot_endpoints_per_service": profile.endpoints_per_service,
        }
        result["propagation"] = [
            await measure_propagation(
                n,
                profile,
                workdir,
                heartbeats=heartbeats,
                cli_round=cli_round,
                profile_dir=profile_dir,
                client=client,
            )
            for client in (clients if "propagation" in parts else ())
            for n in profile.watcher_counts
        ]
        if "propagation" in parts:  # the same fan-out when each snapshot lists a bigger mesh
            for n in profile.big_mesh_watchers:
                result["propagation"].append(
                    await measure_propagation(
                        n,
                        dataclasses.replace(profile, rounds=profile.big_mesh_rounds),
                        workdir,
                        heartbeats=False,
                        cli_round=False,
                        profile_dir=profile_dir,
                        client="light",
                        background=profile.big_mesh_services,
                    )
                )
        if "replicas" in parts:
            result["replica_propagation"] = [
                await measure_replica_propagation(n, profile, workdir)
                for n in profile.replica_watchers
            ]
        if "signing" in parts:
            result["signing"] = await measure_signing(profile, workdir)
        if "registration" in parts:
            result["registration"] = measure_registration(profile, workdir)
        if "snapshots" in parts:
            result["snapshots"] = measure_snapshots(profile)
        document.finish_document(result, started)
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def write_results(result: dict[str, Any], out_dir: Path, stem: str = "control_plane") -> None:
    """Write ``<stem>.json``, ``<stem>.md`` and (with matplotlib) ``<stem>.png``."""
    document.write_files(result, out_dir, stem, render=render_markdown, plot=plot)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.control_plane [--quick] [--out DIR]``."""
    return document.main(
        argv,
        prog="python -m benchmarks.control_plane",
        quick_help="the smoke-test profile (~15 s)",
        options=_options,
        execute=_execute,
        write=write_results,
        render=render_markdown,
    )


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--watchers", type=int, nargs="*", help="watcher counts (default 100 1000)")
    parser.add_argument(
        "--heartbeats",
        action="store_true",
        help="agent-mode watchers also heartbeat every 5 s (off by default: see the report)",
    )
    parser.add_argument(
        "--clients", nargs="*", choices=("agent", "light"), help="watcher client modes"
    )
    parser.add_argument("--rounds", type=int, help="applies per watcher count")
    parser.add_argument(
        "--only",
        nargs="*",
        choices=PARTS,
        help="parts to run",
    )
    parser.add_argument(
        "--profile-control",
        type=Path,
        metavar="DIR",
        help="run the control service under cProfile, writing DIR/control-<N>.prof",
    )


def _execute(args: argparse.Namespace) -> dict[str, Any]:
    profile = Profile.quick() if args.quick else Profile()
    if args.watchers:
        profile = dataclasses.replace(profile, watcher_counts=tuple(args.watchers))
    if args.rounds:
        profile = dataclasses.replace(profile, rounds=args.rounds)
    if args.profile_control is not None:
        args.profile_control.mkdir(parents=True, exist_ok=True)
    return asyncio.run(
        run(
            profile,
            quick=args.quick,
            heartbeats=args.heartbeats,
            clients=args.clients or ("agent", "light"),
            profile_dir=args.profile_control,
            parts=args.only or PARTS,
        )
    )
