"""The micro-benchmark's run and command line (``python -m benchmarks.micro``)."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import document
from benchmarks.micro.backend import Backend, serve_backend
from benchmarks.micro.identities import make_identities
from benchmarks.micro.imports import measure_imports
from benchmarks.micro.jwt import measure_jwt
from benchmarks.micro.layers import measure_layers
from benchmarks.micro.path import measure_path
from benchmarks.micro.report import plot, render_markdown
from benchmarks.micro.settings import Profile, machine_info
from benchmarks.micro.steps import measure_steps
from benchmarks.micro.tls import measure_tls


def run(profile: Profile, *, quick: bool) -> dict[str, Any]:
    """Run every part; returns the result document."""
    workdir = Path(tempfile.mkdtemp(prefix="meshlib-micro-"))
    os.chmod(workdir, 0o700)
    backend: Backend | None = None
    started = time.perf_counter()
    try:
        result = document.new_document("micro", profile, quick=quick, machine=machine_info())
        result["imports"] = measure_imports()  # first: fresh interpreters, an idle machine
        result["layers"] = measure_layers(profile)
        result["jwt"] = measure_jwt(profile)
        ids = make_identities(workdir)
        backend = Backend(workdir / "tls")
        result["tls"] = measure_tls(profile, backend, ids)
        result["path"] = measure_path(profile, backend, ids)
        result["steps"] = measure_steps(profile, backend, ids)
        document.finish_document(result, started)
        return result
    finally:
        if backend is not None:
            backend.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def write_results(result: dict[str, Any], out_dir: Path, stem: str = "micro") -> None:
    """Write ``<stem>.json``, ``<stem>.md`` and (with matplotlib) ``<stem>.png``."""
    document.write_files(result, out_dir, stem, render=render_markdown, plot=plot)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.micro [--quick] [--out DIR]``."""
    return document.main(
        argv,
        prog="python -m benchmarks.micro",
        quick_help="the smoke-test profile (~10 s)",
        options=_options,
        execute=_execute,
        write=write_results,
        render=render_markdown,
    )


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--serve-backend", type=Path, help=argparse.SUPPRESS)


def _execute(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.serve_backend is not None:  # the child process Backend starts: no results
        serve_backend(args.serve_backend)
        return None
    return run(Profile.quick() if args.quick else Profile(), quick=args.quick)
