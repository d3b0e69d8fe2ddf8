"""The targets table: every issue-12 target judged per library mode and caller, with a margin.

Pure: a hand-built summary, no benchmark run; what is checked is the arithmetic of the
verdicts, never a measured figure.
"""

from __future__ import annotations

from typing import Any

from benchmarks.report.checks import check_targets
from benchmarks.report.stats import stat
from benchmarks.report.target_table import targets_markdown
from benchmarks.report.targets import TARGET, TARGETS


def _latency(p50: float, p99: float) -> dict[str, Any]:
    return {"p50": stat([p50]), "p99": stat([p99])}


def _summary() -> dict[str, Any]:
    """http-c adds 40/300 µs sync and 60/90 µs async; the pair adds 400/800 µs."""
    lib_b = {
        "direct_us": _latency(40, 300),
        "direct_async_us": _latency(60, 90),
        "sequential_us": _latency(500, 900),
        "cpu_ms_per_1k": {"100": stat([100])},
        "rates_us": {"100": _latency(10, 120), "200": _latency(10, 400)},
    }
    pair_b = {k: _latency(400, 800) for k in ("direct_us", "direct_async_us", "sequential_us")}
    return {
        "modes": {
            "http-b": {},
            "http-c": {"rates": {"100": {"sustained": True}, "200": {"sustained": False}}},
            "http-d": {"rates": {"100": {"sidecar_cpu_ms_per_1k": stat([800])}}},
        },
        "added": {
            "http-c": {
                "over_b": lib_b,
                "over_a": {"rss_mib": {"frontend": stat([11.0]), "backend": stat([14.0])}},
            },
            "http-d": {"over_b": pair_b},
        },
        "headline_rate": {"http": 100.0},
    }


def _by(checks: list[dict[str, Any]], target: str, where: str) -> dict[str, Any]:
    (found,) = [c for c in checks if c["target"] == target and c["where"].startswith(where)]
    return found


def test_targets_are_issue_12s() -> None:
    """One definition holds issue 12's limits."""
    limits = {t.key: t.limit for t in TARGETS}
    assert limits == {
        "added_p50_us": 50,
        "added_p99_us": 100,
        "pair_factor_p50": 8,
        "pair_factor_p99": 8,
        "cpu_fraction": 0.25,
        "extra_rss_mib": 12,
        "open_loop_p99_us": 150,
    }
    assert not TARGET["pair_factor_p50"].at_most and TARGET["added_p50_us"].at_most


def test_each_check_says_met_or_missed_and_by_how_much() -> None:
    """Margins are signed in the target's unit: spare when met, shortfall when missed."""
    checks = check_targets(_summary(), "http")
    assert {c["mode"] for c in checks} == {"http-c"}
    sync_p50 = _by(checks, "added_p50_us", "sync")
    assert sync_p50["met"] and sync_p50["margin"] == 10
    sync_p99 = _by(checks, "added_p99_us", "sync")
    assert not sync_p99["met"] and sync_p99["margin"] == -200
    async_p99 = _by(checks, "added_p99_us", "async")
    assert async_p99["met"] and async_p99["margin"] == 10
    factor = _by(checks, "pair_factor_p50", "sync")
    assert factor["measured"] == 10 and factor["met"] and factor["margin"] == 2
    cpu = _by(checks, "cpu_fraction", "at 100")
    assert cpu["measured"] == 0.125 and cpu["met"]
    assert _by(checks, "extra_rss_mib", "frontend")["met"]
    assert _by(checks, "extra_rss_mib", "backend")["margin"] == -2
    slow = _by(checks, "open_loop_p99_us", "200")
    assert not slow["met"] and "did not sustain" in slow["detail"]


def test_table_rows_carry_the_verdict_and_margin() -> None:
    """The Markdown rows read 'met (… to spare)' or '**missed** by …'."""
    summary = _summary()
    summary["targets"] = {"http": {"checks": check_targets(summary, "http")}}
    table = "\n".join(targets_markdown(summary))
    assert "## Issue 12's targets" in table
    assert "| http-c, sync caller, one hop | 40 µs | met (10 µs to spare) |" in table
    assert "| http-c, sync caller, one hop | 300 µs | **missed** by 200 µs |" in table
    assert "| http-c, backend (server) | 14.0 MiB | **missed** by 2.0 MiB |" in table
