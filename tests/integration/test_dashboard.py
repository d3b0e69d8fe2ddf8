"""The web dashboard: token-guarded data, and the page itself in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

import meshlib
from tests.integration.harness import Control, Service, wait_endpoints, wait_for

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium")
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--ignore-certificate-errors",
    "--virtual-time-budget=8000",
]


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Control]:
    """A control service scraping every second (overrides conftest's, so workloads use it)."""
    plane = Control(tmp_path / "control", "--instance-ttl", "5s", "--scrape-interval", "1")
    plane.start()
    yield plane
    plane.stop()


@contextmanager
def background_traffic(mesh: meshlib.Mesh, path: str) -> Iterator[list[int]]:
    """GET *path* through *mesh* about 20 times a second until the block ends."""
    stop = threading.Event()
    statuses: list[int] = []

    def run() -> None:
        with mesh.client() as http:
            for i in range(6000):  # bounded: at most five minutes
                if stop.wait(0.05):
                    return
                statuses.append(http.get(f"{path}{i}").status_code)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join(10)


def _dashboard_url(control: Control) -> str:
    return control.ok("dashboard").strip()


def _chromium(tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    profile = tmp_path / f"chromium-{name}"
    profile.mkdir()
    return subprocess.run(
        [CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_dashboard_data_needs_the_token(control):
    """dashboard-data without a token or with a wrong one is 401; the right one answers."""
    url = _dashboard_url(control)
    base, _, fragment = url.partition("/dashboard#token=")
    assert base == control.url and fragment
    token_file = control.data_dir / "admin" / "dashboard.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    with httpx.Client(base_url=base, verify=False, timeout=10) as http:
        assert http.get("/v1/admin/dashboard-data").status_code == 401
        wrong = http.get("/v1/admin/dashboard-data", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert "dashboard token" in wrong.json()["error"]["message"]
        # The token opens only the dashboard data, not the rest of the admin API.
        auth = {"authorization": f"Bearer {fragment}"}
        assert http.get("/v1/admin/instances", headers=auth).status_code == 403
        good = http.get("/v1/admin/dashboard-data", headers=auth)
        assert good.status_code == 200
        assert set(good.json()) >= {"stats", "instances", "services"}
        page = http.get("/dashboard")
        assert page.status_code == 200 and "<svg" in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (apt-get install chromium)")
def test_dashboard_in_headless_chromium(tmp_path, control, workload):
    """The page shows services, the edge's golden metrics and the instances; screenshot saved."""
    orders = Service(control, "orders", tmp_path, labels="version=v1").start()
    try:
        client = workload("frontend")
        wait_endpoints(client, "orders")
        with background_traffic(client, "http://orders/items/") as statuses:
            _check_page(tmp_path, control)
        assert statuses and set(statuses) == {200}
    finally:
        orders.stop()


def _check_page(tmp_path: Path, control: Control) -> None:
    """Wait for the edge in the stats, then load the page twice in Chromium."""

    def edge_seen() -> bool:
        stats = json.loads(control.ok("stat", "-o", "json"))
        return any(
            e["source"] == "frontend" and e["service"] == "orders" and e["rps"] > 0
            for e in stats["edges"]
        )

    wait_for(edge_seen, 30, "the frontend -> orders edge in /v1/admin/stats", interval=0.5)
    ids = [i["id"] for i in control.instances()]
    assert len(ids) == 2
    url = _dashboard_url(control)

    dumped = _chromium(tmp_path, "dom", "--dump-dom", url)
    dom = dumped.stdout
    (tmp_path / "dashboard.html").write_text(dom)
    assert re.search(r">updated \d\d:\d\d:\d\d<", dom), dumped.stderr[-2000:]
    assert re.search(r'<section id="error" style="display: none;?">', dom), dom[-3000:]
    for name in ("orders", "frontend"):
        assert f">{name}<" in dom  # graph nodes and table cells, not just the page's script
    assert re.search(r'class="edge-label">\d+\.\d\d rps · 100\.0 % · p99 [\d.]+ ms<', dom)
    for instance_id in ids:
        assert f"<code>{instance_id}</code>" in dom
    assert ">library<" in dom and ">v1<" in dom

    shot = tmp_path / "dashboard.png"
    taken = _chromium(tmp_path, "shot", f"--screenshot={shot}", "--window-size=1280,900", url)
    assert shot.exists(), taken.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 900)
    assert len(data) > 20_000  # a rendered page, not a blank canvas
