"""The harness's child processes on 127.0.0.1: starting, stopping, and reading /proc.

Every child is started from the harness's main thread with ``PR_SET_PDEATHSIG`` set, so a
harness killed outright takes its children with it; :class:`Fleet` stops the rest
(SIGTERM, then SIGKILL) in a ``finally`` and at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "PYTHON",
    "READY_TIMEOUT",
    "ROOT",
    "Child",
    "Fleet",
    "die_with_parent",
    "free_port",
    "process_tree",
    "rss_kib",
    "wait_for",
]

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
PR_SET_PDEATHSIG = 1
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 8.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    # Runs in the child between fork and exec: SIGKILL it when the harness thread dies.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    terminated: bool = False

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Fleet:
    """Every process the harness started; :meth:`stop_all` ends them, however we got there."""

    workdir: Path
    children: list[Child] = field(default_factory=list)

    def __post_init__(self) -> None:
        atexit.register(self.stop_all)

    def spawn(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> Child:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                list(args),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                cwd=ROOT,
                preexec_fn=die_with_parent,  # the harness spawns from its one thread
            )
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def terminate(self, children: Sequence[Child]) -> None:
        """SIGTERM *children* (once each) without waiting."""
        for child in children:
            if child.alive() and not child.terminated:
                child.terminated = True
                with contextlib.suppress(ProcessLookupError):
                    child.popen.send_signal(signal.SIGTERM)

    def stop(self, children: Sequence[Child]) -> None:
        """SIGTERM *children* together, wait for all, SIGKILL what is left."""
        self.terminate(children)
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in children:
            try:
                child.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.popen.kill()
                child.popen.wait(5)
        for child in children:
            if child in self.children:
                self.children.remove(child)

    def stop_all(self) -> None:
        self.stop(list(self.children))


def process_tree(root: int) -> list[int]:
    """*root* and all its descendants (from ``/proc/*/stat``)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, ()))
    return out


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, Pss) of one process in KiB; (0, 0) once it is gone."""
    rss = pss = 0
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    break
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                    break
    return rss, pss


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, logs: Sequence[Child]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in logs:
            if not child.alive():
                raise RuntimeError(
                    f"{child.name} exited while waiting for {what}:\n{child.output()[-3000:]}"
                )
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    tails = "\n".join(f"--- {c.name}\n{c.output()[-1500:]}" for c in logs)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}\n{tails}")
