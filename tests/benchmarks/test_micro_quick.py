"""Smoke test of ``python -m benchmarks.micro --quick``: complete, sane output.

No assertion here is about timing: the figures are measured, not promised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import micro

pytestmark = pytest.mark.integration

LAYERS = {"routing", "call", "balancer", "breaker", "admission", "retry", "telemetry"}


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("micro")
    assert micro.main(["--quick", "--out", str(out)]) == 0
    return json.loads((out / "micro.json").read_text()), out


def test_writes_json_and_markdown(result: tuple[dict[str, Any], Path]) -> None:
    """Both files are written with every section."""
    doc, out = result
    markdown = (out / "micro.md").read_text()
    for heading in (
        "## Import footprint",
        "## Per-layer cost",
        "## TLS on loopback",
        "## Whole client path",
    ):
        assert heading in markdown
    assert doc["profile"] == "quick"
    assert doc["timestamp"]


def test_every_layer_measured(result: tuple[dict[str, Any], Path]) -> None:
    """Each mesh layer has at least one row with a finite median and repeats."""
    doc, _ = result
    assert {r["layer"] for r in doc["layers"]} == LAYERS
    for row in doc["layers"]:
        assert row["repeats"] >= 1
        assert row["iterations"] > 0
        assert row["min_ns"] <= row["median_ns"] <= row["max_ns"]


def test_tls_and_path_series_complete(result: tuple[dict[str, Any], Path]) -> None:
    """TLS and whole-path series all have samples and positive latencies."""
    doc, _ = result
    for key in ("tcp_connect", "tcp_connect_mtls_handshake", "plaintext_round_trip"):
        assert doc["tls"][key]["count"] > 0 and doc["tls"][key]["p50_us"] > 0
    assert doc["tls"]["tls_round_trip"]["p50_us"] > 0
    rows = doc["path"]["rows"]
    assert len(rows) == 10
    clients = {row["client"] for row in rows}
    assert {"meshlib async, shared client", "meshlib async, client per request"} <= clients
    for row in rows:
        assert row["count"] > 0
        assert 0 < row["p50_us"] <= row["p99_us"]
    shares = doc["path"]["profile"]["self_time_share"]
    assert "meshlib" in shares and abs(sum(shares.values()) - 1.0) < 0.01


def test_interpreter_steps_recorded(result: tuple[dict[str, Any], Path]) -> None:
    """Client (sync, async) and server comparisons, each with both counts and its top list."""
    doc, out = result
    rows = doc["steps"]["rows"]
    assert [r["name"].split(":")[0] for r in rows] == ["client, sync", "client, async", "server"]
    for row in rows:
        assert row["baseline_steps"] > 0 and row["mesh_steps"] > 0
        assert row["added_steps"] == row["mesh_steps"] - row["baseline_steps"]
        assert row["top"] and all(t["function"] for t in row["top"])
    assert "Interpreter steps per request" in (out / "micro.md").read_text()


def test_import_footprint_recorded(result: tuple[dict[str, Any], Path]) -> None:
    """The fresh-interpreter import record has its fields (what it finds is not asserted)."""
    doc, _ = result
    imports = doc["imports"]
    for key in ("forbidden_after_import", "forbidden_after_construct", "rss_import_mib"):
        assert key in imports, key
    assert "watched_after_import" in imports["mesh"] or "error" in imports["mesh"]
    assert "rss_kib_after_import" in imports["httpx"]


def test_jwt_rows(result: tuple[dict[str, Any], Path]) -> None:
    """Verification cost with and without a cached key set is measured for RS256 and ES256."""
    doc, out = result
    whats = {r["what"] for r in doc["jwt"]}
    for alg in ("RS256", "ES256"):
        assert {f"{alg} token, cached key set", f"{alg} token, no cached key set"} <= whats
    for row in doc["jwt"]:
        assert row["min_ns"] <= row["median_ns"] <= row["max_ns"]
    assert "## End-user authentication (JWT)" in (out / "micro.md").read_text()
