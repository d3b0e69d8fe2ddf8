"""The result document of a stand-alone benchmark script, from its header to its files.

The packages ``benchmarks.control_plane`` and ``benchmarks.micro`` each measure different
things but record them the same way: a JSON document that opens with the machine and
profile and closes with the elapsed time and the load average at the end, written next to
a Markdown rendering and (when matplotlib is installed) a PNG plot, by a command line
that takes ``--quick``, ``--out DIR`` and ``--render JSON``. That shared shape lives
here; what each benchmark measures, renders and plots stays in its package.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "finish_document",
    "machine_info",
    "main",
    "measured_line",
    "new_document",
    "pyplot",
    "save_figure",
    "write_files",
]

Result = dict[str, Any]
RESULTS = Path(__file__).resolve().parent / "results"
PLOT_DPI = 110


# --------------------------------------------------------------------- the document


def machine_info(**extra: Any) -> dict[str, Any]:
    """What the figures were measured on.

    Args:
        extra: further facts (library versions, say), placed after ``cpus``.

    Returns:
        Python version, platform, CPU model and count, *extra*, and the load average now.
    """
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        **extra,
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def new_document(benchmark: str, profile: Any, *, quick: bool, machine: dict[str, Any]) -> Result:
    """The opening keys of a result document.

    Args:
        benchmark: the script's name (``micro``, ``control_plane``).
        profile: the script's ``Profile`` (a slotted dataclass); its fields are recorded.
        quick: whether *profile* is the smoke-test one.
        machine: what :func:`machine_info` (or the script's variant of it) returned.
    """
    return {
        "benchmark": benchmark,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "profile": "quick" if quick else "default",
        "profile_settings": _profile_settings(profile),
        "machine": machine,
    }


def _profile_settings(profile: Any) -> dict[str, Any]:
    # Tuples as lists, so the document reads the same before and after a JSON round trip.
    out: dict[str, Any] = {}
    for name in profile.__slots__:
        value = getattr(profile, name)
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def finish_document(result: Result, started: float) -> None:
    """Record the elapsed time since *started* (``time.perf_counter``) and the load now."""
    result["elapsed_seconds"] = round(time.perf_counter() - started, 1)
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]


def measured_line(result: Result, *, command: str, software: str = "") -> str:
    """The Markdown sentence saying when, on what and by which *command* it was measured.

    Args:
        result: the document (its ``timestamp``, ``profile`` and ``machine``).
        command: what produced it, e.g. ``python -m benchmarks.micro``.
        software: versions worth naming after Python's, e.g. ``"OpenSSL 3.0, httpx 0.28"``.
    """
    m = result["machine"]
    versions = f"{m['python']}, {software}" if software else m["python"]
    return (
        f"Measured {result['timestamp']} on {m['cpus']} CPU(s) ({m['cpu']}), Python "
        f"{versions}, profile `{result['profile']}`; load average at start "
        f"{', '.join(str(x) for x in m['loadavg_at_start'])} (at end: "
        f"{', '.join(str(x) for x in m.get('loadavg_at_end', ['?']))}; other work shared "
        f"the machine). Produced by `{command}`."
    )


# --------------------------------------------------------------------- the files


def pyplot() -> Any | None:
    """``matplotlib.pyplot`` on the non-interactive Agg backend; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(plt: Any, fig: Any, path: Path) -> None:
    """Lay out *fig*, write it to *path* as a PNG and release it."""
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)


def write_files(
    result: Result,
    out_dir: Path,
    stem: str,
    *,
    render: Callable[[Result], str],
    plot: Callable[[Result, Path], bool],
) -> None:
    """Write ``<stem>.json``, ``<stem>.md`` (by *render*) and, if *plot* can, ``<stem>.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / f"{stem}.md").write_text(render(result))
    plot(result, out_dir / f"{stem}.png")


# --------------------------------------------------------------------- the command line


def main(
    argv: Sequence[str] | None,
    *,
    prog: str,
    quick_help: str,
    options: Callable[[argparse.ArgumentParser], None],
    execute: Callable[[argparse.Namespace], Result | None],
    write: Callable[[Result, Path], None],
    render: Callable[[Result], str],
) -> int:
    """A benchmark script's command line: ``--quick``, ``--out DIR``, its own flags, ``--render``.

    Args:
        argv: the arguments (None: ``sys.argv``).
        prog: the program name shown in usage.
        quick_help: the help text of ``--quick``.
        options: adds the script's own flags (they come between ``--out`` and ``--render``).
        execute: runs the benchmark for the parsed arguments and returns its document, or
            None when it did something else that writes no results.
        write: writes a document's files into a directory.
        render: the document as Markdown, printed after a run.

    Returns:
        The exit status, 0.
    """
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    options(parser)
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only re-render .md/.png from a JSON result"
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        write(json.loads(args.render.read_text()), args.out)
        return 0
    result = execute(args)
    if result is None:
        return 0
    write(result, args.out)
    print(render(result))
    return 0
