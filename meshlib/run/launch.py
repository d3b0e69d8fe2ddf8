"""``meshctl run`` / ``python -m meshlib.run``: start an unmodified Python service in the mesh.

The launcher sets the ``MESH_*`` variables from its flags, puts meshlib's bootstrap
directory first on ``PYTHONPATH`` (its ``sitecustomize`` installs the mesh in the child
before the app's code runs, the way ``opentelemetry-instrument`` does) and starts the
command in its own process group (SIGTERM'd if the launcher dies). SIGTERM, SIGINT,
SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are passed to the child; the launcher returns the
child's exit code, or 128 + N when a signal N ended it (as a shell reports it).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from meshlib.config import parse_labels
from meshlib.errors import ConfigError

__all__ = ["BOOT_DIR", "FORWARDED", "child_environment", "main"]

BOOT_DIR = Path(__file__).resolve().parent / "boot"
FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
PR_SET_PDEATHSIG = 1  # prctl(2)
USAGE = (
    "meshctl run [--service S] [--namespace N] [--labels k=v,...] [--clients-only] "
    "-- COMMAND [ARG...]"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshctl run",
        usage=USAGE,
        description="Start an unmodified Python service in the mesh (see docs/run.md). "
        "The MESH_* variables (MESH_CONTROL_URL, MESH_TOKEN, …) configure it; the flags "
        "override MESH_SERVICE, MESH_NAMESPACE and MESH_LABELS.",
    )
    parser.add_argument("--service", help="the service name (MESH_SERVICE)")
    parser.add_argument("--namespace", help="its namespace (MESH_NAMESPACE)")
    parser.add_argument("--labels", help="instance labels, k=v,... (MESH_LABELS)")
    parser.add_argument(
        "--clients-only",
        action="store_true",
        help="mesh the clients only: the process's servers stay as the app made them "
        "(an edge service facing callers outside the mesh; MESH_RUN_SERVE=0)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the server command")
    return parser


def child_environment(args: argparse.Namespace, environ: dict[str, str]) -> dict[str, str]:
    """The child's environment: flags over ``MESH_*``, the bootstrap on ``PYTHONPATH``.

    Raises:
        ConfigError: no service name, or labels that are not ``k=v,...``.
    """
    env = dict(environ)
    for flag, name in (("service", "MESH_SERVICE"), ("namespace", "MESH_NAMESPACE")):
        value = getattr(args, flag)
        if value is not None:
            env[name] = value
    if args.labels is not None:
        env["MESH_LABELS"] = args.labels
    if args.clients_only:
        env["MESH_RUN_SERVE"] = "0"
    if not env.get("MESH_SERVICE"):
        raise ConfigError("--service: required (or set MESH_SERVICE)")
    try:
        parse_labels(env.get("MESH_LABELS", ""))
    except ConfigError as exc:
        if args.labels is None:
            raise
        raise ConfigError(str(exc).replace("MESH_LABELS", "--labels", 1)) from None
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(BOOT_DIR) + (os.pathsep + path if path else "")
    env["MESH_RUN"] = "1"
    return env


def _terminate_with_launcher() -> None:
    """In the child, before exec: SIGTERM it if the launcher dies (even by SIGKILL).

    The child has its own process group, so it would otherwise outlive a killed launcher.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        print(f"meshctl run: no command to run\nusage: {USAGE}", file=sys.stderr)
        return 2
    try:
        env = child_environment(args, dict(os.environ))
    except ConfigError as exc:
        print(f"meshctl run: {exc}", file=sys.stderr)
        return 2
    try:
        child = subprocess.Popen(
            command,
            env=env,
            process_group=0,
            preexec_fn=_terminate_with_launcher if sys.platform == "linux" else None,
        )
    except OSError as exc:
        print(f"meshctl run: cannot start {command[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 127

    def forward(signum: int, _frame: FrameType | None) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    code = child.wait()
    return 128 - code if code < 0 else code
