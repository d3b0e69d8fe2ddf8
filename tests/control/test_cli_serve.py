"""Processes that speak like servers: ``meshctl control serve`` and ``meshlib.serve`` say
where they listen and as whom, a taken port is one line and exit 1, a stop is quiet, and a
first start with the control service down says what it waits for."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import meshlib
import meshlib.runtime.waiting
from meshlib.errors import StartTimeout
from tests.integration.harness import MESHCTL, ROOT, Control, free_port

pytestmark = pytest.mark.integration

NOISE = ("Traceback", "CancelledError", "Task exception", "ERROR")


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def meshctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MESHCTL, *args], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )


def test_control_serve_on_a_taken_port_is_one_line(tmp_path: Path, taken_port: int) -> None:
    data_dir = tmp_path / "control"
    result = meshctl("control", "serve", "--data-dir", str(data_dir),
                     "--listen", f"127.0.0.1:{taken_port}")  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: --listen 127.0.0.1:{taken_port}: cannot listen: Address already in use"
    ]
    assert not (data_dir / "mesh.db").exists()  # refused before the store was opened


def test_a_taken_xds_port_ends_the_service_with_one_error(tmp_path: Path, taken_port: int) -> None:
    result = meshctl("control", "serve", "--data-dir", str(tmp_path / "c"),
                     "--listen", f"127.0.0.1:{free_port()}",
                     "--xds-listen", f"127.0.0.1:{taken_port}")  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[-1].startswith(f"error: --xds-listen 127.0.0.1:{taken_port}: ")
    assert not any(word in result.stderr for word in NOISE), result.stderr


def test_a_stop_with_a_watching_workload_is_quiet(tmp_path: Path) -> None:
    """SIGTERM (SIGINT has the same handler) while a workload long-polls: exit 0, no noise."""
    control = Control(tmp_path / "control")
    control.start()
    mesh = meshlib.Mesh(
        service="orders",
        control_url=control.url,
        token=control.token("orders"),
        data_dir=tmp_path / "orders",
        start_timeout=20,
    ).start()
    try:
        assert control.process.proc is not None
        control.process.proc.send_signal(signal.SIGTERM)
        assert control.process.proc.wait(15) == 0
    finally:
        mesh.close()
        control.stop()
    output = control.process.output()
    assert f"listening on {control.url} as spiffe://mesh.local/control" in output
    assert not any(word in output for word in NOISE), output


SERVE_APP = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import meshlib

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    url, token, data_dir, port = sys.argv[1:5]
    mesh = meshlib.Mesh(service="orders", control_url=url, token=token,
                        data_dir=Path(data_dir), start_timeout=20)
    meshlib.serve(app, mesh=mesh, port=int(port))
    """
)


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Control]:
    c = Control(tmp_path_factory.mktemp("serve") / "control")
    c.start()
    yield c
    c.stop()


def test_meshlib_serve_announces_itself_and_stops_quietly(control: Control, tmp_path: Path) -> None:
    port = free_port()
    args = [sys.executable, "-c", SERVE_APP, control.url, control.token("orders"),
            str(tmp_path / "orders"), str(port)]  # fmt: skip
    with subprocess.Popen(args, stderr=subprocess.PIPE, text=True, cwd=ROOT) as proc:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the first line is the announcement
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(15) == 0
    assert line.startswith(
        f"meshlib: orders.default listening on https://127.0.0.1:{port} (mTLS) as "
        "spiffe://mesh.local/ns/default/sa/orders; admin http://127.0.0.1:"
    ), line
    assert line.rstrip().endswith(f"; control {control.url}")
    assert not any(word in rest for word in NOISE), rest


def test_meshlib_serve_on_a_taken_port_is_one_line(
    control: Control, tmp_path: Path, taken_port: int
) -> None:
    args = [sys.executable, "-c", SERVE_APP, control.url, control.token("orders"),
            str(tmp_path / "orders"), str(taken_port)]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"meshlib: port 127.0.0.1:{taken_port}: cannot listen: Address already in use"
    ]


def test_a_first_start_says_what_it_waits_for(
    control: Control,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(meshlib.runtime.waiting, "FIRST", 0.2)
    monkeypatch.setattr(meshlib.runtime.waiting, "EVERY", 0.4)
    down = f"https://127.0.0.1:{free_port()}"
    mesh = meshlib.Mesh(
        service="orders",
        control_url=down,
        token=control.token("orders"),
        data_dir=tmp_path / "orders",
        start_timeout=1.5,
    )
    with caplog.at_level(logging.WARNING, logger="meshlib"), pytest.raises(StartTimeout):
        mesh.start()
    waits = [r.getMessage() for r in caplog.records if "waiting for the control" in r.getMessage()]
    assert 2 <= len(waits) <= 5, waits
    assert all(w.startswith(f"orders.default waiting for the control service at {down}")
               for w in waits)  # fmt: skip
    assert "no answer yet" not in waits[-1]  # by then it names the connect error
