"""The data-plane benchmark's quick profile, as a smoke test: complete, sane output.

It never asserts on a timing figure: only that every mode ran, that every count adds up,
that every percentile is present and positive, and that the files were written.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.loadgen import PERCENTILES, Target, percentiles
from benchmarks.run import PROFILES
from benchmarks.topology import ROOT

QUICK = PROFILES["quick"]
KEYS = [f"p{p:g}" for p in PERCENTILES]


def test_percentiles_are_nearest_rank_in_microseconds() -> None:
    """p50 of 1..100 µs is 50 µs, p99.9 the largest; nothing gives NaN."""
    values = [i * 1000 for i in range(1, 101)]
    result = percentiles(values)
    assert result["p50"] == 50.0
    assert result["p99"] == 99.0
    assert result["p99.9"] == 100.0
    assert math.isnan(percentiles([])["p50"])


def test_target_parses_a_plain_http_url() -> None:
    """The generator speaks HTTP/1.1 to host:port/path and refuses anything else."""
    target = Target.parse("http://127.0.0.1:8080/call")
    assert target.request == b"GET /call HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
    with pytest.raises(ValueError):
        Target.parse("https://127.0.0.1/call")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One quick-profile run into a temporary directory."""
    out = tmp_path_factory.mktemp("bench")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--profile", "quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out, json.loads((out / "data_plane.json").read_text())


def _positive_percentiles(latency: dict[str, float], where: str) -> None:
    for key in KEYS:
        assert key in latency, f"{where}: {key} missing"
        assert latency[key] > 0 and math.isfinite(latency[key]), f"{where}: {key}={latency[key]}"


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_every_file_is_written(quick_run: tuple[Path, dict[str, Any]]) -> None:
    """JSON, the Markdown table and the three PNG plots exist."""
    out, document = quick_run
    for name in ("data_plane.md", "data_plane_cpu_memory.png", "data_plane_latency_http.png"):
        assert (out / name).stat().st_size > 0, name
    protocols = {mode.split("-")[0] for mode in document["modes"]}
    if "grpc" in protocols:
        assert (out / "data_plane_latency_grpc.png").read_bytes()[:4] == b"\x89PNG"
    table = (out / "data_plane.md").read_text()
    for mode in document["modes"]:
        assert f"| {mode} " in table, mode
    for mode, info in document["modes"].items():  # one-hop rows: a sync and an async caller
        if mode.startswith("http"):
            for caller in ("sync", "async"):
                assert f"| {mode} {info['label']} | {caller} |" in table, (mode, caller)
    assert document["machine"]["cpus"] and document["timestamp"]


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_every_mode_ran_once_without_failure(quick_run: tuple[Path, dict[str, Any]]) -> None:
    """No failed mode; one run per mode of the profile (gRPC skipped only without stubs)."""
    _, document = quick_run
    assert document["failures"] == []
    ran = sorted(run["mode"] for run in document["runs"])
    expected = sorted(document["modes"])
    assert ran == expected
    http = {m.split("-")[1] for m in expected if m.startswith("http")}
    assert http | {s.split("-")[1] for s in document["skipped"]} == set("abcde")


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_counts_add_up_and_percentiles_are_positive(
    quick_run: tuple[Path, dict[str, Any]],
) -> None:
    """Every phase answered 200 to each request it counted, with all four percentiles."""
    _, document = quick_run
    for run in document["runs"]:
        mode = run["mode"]
        seq = run["sequential"]
        assert seq["completed"] == QUICK.sequential and seq["errors"] == 0, mode
        _positive_percentiles(seq["latency_us"], f"{mode} sequential")
        if mode.startswith("http"):  # the one-hop probe, the method: sync and async
            for key, flavour in (
                ("sequential_direct", "sync"),
                ("sequential_direct_async", "async"),
            ):
                direct = run[key]
                assert direct["flavour"] == flavour, mode
                assert direct["completed"] == QUICK.sequential and direct["errors"] == 0, mode
                assert len(direct["round_means_us"]) == QUICK.one_hop_rounds, mode
                _positive_percentiles(direct["latency_us"], f"{mode} one hop {flavour}")
        assert len(run["rates"]) == len(QUICK.rates), mode
        for phase in run["rates"]:
            where = f"{mode} {phase['rate']}/s"
            assert phase["errors"] == 0, where
            assert sum(phase["statuses"].values()) == phase["completed"], where
            assert 0 < phase["completed"] <= phase["intended"], where
            assert phase["completed"] + phase["incomplete"] == phase["intended"], where
            _positive_percentiles(phase["latency_us"], where)
            assert phase["cpu"]["total"] > 0, where
        saturation = run["saturation"]
        assert saturation["completed"] > 0 and saturation["errors"] == 0, mode
        assert sum(saturation["statuses"].values()) == saturation["completed"], mode
        _positive_percentiles(saturation["latency_us"], f"{mode} saturation")


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_memory_and_processes_per_instance(quick_run: tuple[Path, dict[str, Any]]) -> None:
    """Each instance has an RSS; a sidecar instance counts its agent and its Envoy."""
    _, document = quick_run
    for run in document["runs"]:
        for instance in ("frontend", "backend"):
            memory = run["memory"][instance]
            assert memory["rss_kib"] > 0, (run["mode"], instance)
            if run["mode"].endswith("-d"):
                names = [p["comm"] for p in memory["processes"]]
                assert any("envoy" in name for name in names), names
                assert len(names) >= 3, names
                assert 0 < memory["sidecar_rss_kib"] < memory["rss_kib"]
            else:
                assert memory["sidecar_rss_kib"] == 0


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_tracing_mode_really_exports_spans(quick_run: tuple[Path, dict[str, Any]]) -> None:
    """Mode (e) built and exported spans on both sides of the hop."""
    _, document = quick_run
    for run in document["runs"]:
        if run["mode"].endswith("-e"):
            stats = run["exit_stats"]
            assert stats["frontend"]["spans_exported"] > 0
            assert stats["backend"]["spans_exported"] > 0


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_summary_has_every_mode_and_the_targets(quick_run: tuple[Path, dict[str, Any]]) -> None:
    """The summary covers each mode, its added latency over (a), and every target's check."""
    _, document = quick_run
    summary = document["summary"]
    assert set(summary["modes"]) == set(document["modes"])
    for mode, entry in summary["modes"].items():
        for key in KEYS:
            assert entry["sequential"][key]["median"] > 0, (mode, key)
        if not mode.endswith("-a"):
            assert "over_a" in summary["added"][mode]
    targets = summary["targets"]["http"]
    assert "library_added_sequential_us" in targets
    assert "library_extra_rss_mib" in targets
    judged = {(c["target"], c["mode"]) for c in targets["checks"]}  # met or not: not asserted
    assert ("added_p50_us", "http-c") in judged and ("extra_rss_mib", "http-e") in judged
    assert all(c["met"] in (True, False, None) for c in targets["checks"])
