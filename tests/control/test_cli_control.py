"""meshctl against a real control service (a process, mTLS): dry runs, warnings for unknown
services, MESH_CONTROL_URL, instance listings, and the OpenAPI document behind credentials."""

from __future__ import annotations

import contextlib
import io
import json
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import meshlib
from meshlib_control.cli import main
from tests.integration.harness import Control, free_port, wait_for

pytestmark = pytest.mark.integration


class Plane:
    def __init__(self, root: Path) -> None:
        self.control = Control(root / "control")
        self.control.start()
        self.mesh = meshlib.Mesh(
            service="orders",
            control_url=self.control.url,
            token=self.control.token("orders"),
            data_dir=root / "orders",
            admin_port=0,
            start_timeout=20,
        ).start()
        self.mesh.set_endpoint("127.0.0.1", 18080)
        wait_for(lambda: self.control.instances(), 20, "orders registered")

    def close(self) -> None:
        self.mesh.close()
        self.control.stop()


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    p = Plane(tmp_path_factory.mktemp("cli-control"))
    yield p
    p.close()


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def ctl(control: Control, *args: str, stdin: str = "") -> Result:
    """meshctl in this process (as the console script would run it), against *control*."""
    out, err = io.StringIO(), io.StringIO()
    real_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([*args, "--data-dir", str(control.data_dir)])
    finally:
        sys.stdin = real_stdin
    return Result(code, out.getvalue(), err.getvalue())


def ok(control: Control, *args: str, stdin: str = "") -> str:
    result = ctl(control, *args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return result.stdout


def policy(name: str, service: str, rps: int = 5) -> str:
    return (
        "apiVersion: meshlib.io/v1\nkind: RateLimit\n"
        f"metadata: {{name: {name}, namespace: default}}\n"
        f"spec: {{service: {service}, requestsPerSecond: {rps}, burst: 5}}\n"
    )


def stored(control: Control, name: str) -> list[dict[str, Any]]:
    items = json.loads(ok(control, "get", "ratelimit", "-o", "json"))
    return [i for i in items if i["metadata"]["name"] == name]


def test_dry_run_validates_on_the_server_and_stores_nothing(plane: Plane) -> None:
    control = plane.control
    dry = ctl(control, "apply", "-f", "-", "--dry-run", "-o", "json", stdin=policy("dry", "orders"))
    assert dry.returncode == 0, dry.stderr
    answer = json.loads(dry.stdout)
    assert answer["dryRun"] is True
    assert answer["results"] == [
        {"kind": "RateLimit", "namespace": "default", "name": "dry", "action": "created"}
    ]
    assert stored(control, "dry") == []

    assert "ratelimit/default/dry created" in ok(
        control, "apply", "-f", "-", stdin=policy("dry", "orders")
    )
    changed = ctl(control, "apply", "-f", "-", "--dry-run", stdin=policy("dry", "orders", 9))
    assert changed.stdout.strip() == "ratelimit/default/dry configured (dry run)"
    same = ctl(control, "apply", "-f", "-", "--dry-run", stdin=policy("dry", "orders"))
    assert same.stdout.strip() == "ratelimit/default/dry unchanged (dry run)"
    [item] = stored(control, "dry")
    assert (item["spec"]["requestsPerSecond"], item["status"]["revision"]) == (5, 1)

    bad = ctl(control, "apply", "-f", "-", "--dry-run", stdin=policy("dry", "orders", -1))
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: ") and "requestsPerSecond" in bad.stderr
    assert stored(control, "dry")[0]["spec"]["requestsPerSecond"] == 5


def test_a_policy_for_an_unknown_service_is_stored_with_a_warning(plane: Plane) -> None:
    control = plane.control
    typo = ctl(control, "apply", "-f", "-", stdin=policy("typo", "ordres"))
    assert typo.returncode == 0, typo.stderr
    assert typo.stdout.strip() == "ratelimit/default/typo created"
    [warning] = typo.stderr.strip().splitlines()
    assert warning.startswith("warning: ratelimit/default/typo: spec.service 'ordres'")
    assert len(stored(control, "typo")) == 1

    checks = json.loads(ok(control, "check", "-o", "json"))
    flagged = [c for c in checks if c["name"] == "policy ratelimit/default/typo"]
    assert [c["status"] for c in flagged] == ["warn"]
    assert "'ordres'" in flagged[0]["message"]
    summary = next(c for c in checks if c["name"] == "policy references")
    assert summary["status"] == "warn"
    text = ctl(control, "check")
    assert text.returncode == 0  # a warning, not a failure
    assert "! policy ratelimit/default/typo:" in text.stdout

    known = ctl(control, "apply", "-f", "-", stdin=policy("fine", "orders"))
    assert (known.returncode, known.stderr) == (0, "")
    ok(control, "delete", "ratelimit", "typo")
    checks = json.loads(ok(control, "check", "-o", "json"))
    assert next(c for c in checks if c["name"] == "policy references")["status"] == "ok"


def test_mesh_control_url_is_honoured_and_a_list_fails_over(
    plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    control = plane.control
    closed = f"https://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MESH_CONTROL_URL", closed)
    result = ctl(control, "get", "services")
    assert result.returncode == 1
    assert f"control service unreachable at {closed}" in result.stderr
    monkeypatch.setenv("MESH_CONTROL_URL", f"{closed},{control.url}")
    result = ctl(control, "get", "services", "-o", "json")
    assert result.returncode == 0, result.stderr
    assert [s["name"] for s in json.loads(result.stdout)] == ["orders"]
    monkeypatch.setenv("MESH_CONTROL_URL", "http://127.0.0.1:1")
    result = ctl(control, "get", "services")
    assert result.returncode == 1 and "is not an https:// URL" in result.stderr
    result = ctl(control, "get", "services", "--control", control.url)  # the flag wins
    assert result.returncode == 0, result.stderr


def test_get_instances_and_services_tables(plane: Plane) -> None:
    control = plane.control
    lines = ok(control, "get", "instances").splitlines()
    header = lines[0].split()
    assert header[:6] == ["ID", "SERVICE", "NAMESPACE", "ADDRESS", "PORT", "ADMIN"]
    row = dict(zip(header, lines[1].split(), strict=True))
    assert row["SERVICE"] == "orders"
    assert row["PORT"] == "18080"
    assert row["ADMIN"] == str(plane.mesh.admin_port)
    services = ok(control, "get", "services").splitlines()
    assert services[1].split() == ["default", "orders", "1", "library"]


def _tls(control: Control, *, admin: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(control.data_dir / "admin" / "bundle.pem"))
    ctx.check_hostname = False
    if admin:
        admin_dir = control.data_dir / "admin"
        ctx.load_cert_chain(admin_dir / "admin.pem", admin_dir / "admin.key")
    return ctx


def test_the_openapi_document_needs_credentials(plane: Plane) -> None:
    control = plane.control
    url = f"{control.url}/openapi.json"
    anonymous = httpx.get(url, verify=_tls(control, admin=False), timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthenticated"
    wrong = httpx.get(
        url, verify=_tls(control, admin=False), headers={"authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401
    token = (control.data_dir / "admin" / "dashboard.token").read_text().strip()
    by_token = httpx.get(
        url, verify=_tls(control, admin=False), headers={"authorization": f"Bearer {token}"}
    )
    by_admin = httpx.get(url, verify=_tls(control, admin=True), timeout=10)
    assert by_token.status_code == by_admin.status_code == 200
    assert by_token.json() == by_admin.json()
    workload = httpx.get(url, verify=plane.mesh.tls.client_context(), timeout=10)
    assert workload.status_code == 401


def test_the_openapi_document_declares_bodies_and_errors(plane: Plane) -> None:
    doc = httpx.get(
        f"{plane.control.url}/openapi.json", verify=_tls(plane.control, admin=True), timeout=10
    ).json()
    paths = doc["paths"]
    assert "/openapi.json" not in paths
    envelope = doc["components"]["schemas"]["Error"]
    assert envelope["required"] == ["error"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    sign = paths["/v1/sign"]["post"]
    assert sign["requestBody"]["content"]["application/json"]["schema"]["required"] == ["csr"]
    assert {"400", "401", "403", "413"} <= set(sign["responses"])
    apply = paths["/v1/admin/resources"]["post"]
    assert "application/yaml" in apply["requestBody"]["content"]
    assert any(p["name"] == "dryRun" for p in apply["parameters"])
    tokens = paths["/v1/admin/tokens"]["post"]
    assert tokens["requestBody"]["content"]["application/json"]["schema"]["required"] == ["service"]
    assert {"400", "403", "413"} <= set(tokens["responses"])
    assert "404" in paths["/v1/admin/resources/{kind}/{namespace}/{name}"]["delete"]["responses"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            answers = operation["responses"]
            assert "422" not in answers, f"{method} {path}"
            for code, answer in answers.items():
                if code.startswith(("4", "5")):
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, f"{method} {path}"


def test_a_malformed_parameter_is_a_400_with_the_envelope(plane: Plane) -> None:
    response = httpx.get(
        f"{plane.control.url}/v1/snapshot",
        params={"wait": "soon"},
        verify=plane.mesh.tls.client_context(),
        timeout=10,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["path"]) == ("invalid", "wait")
    assert error["message"].startswith("wait: ")


def test_dashboard_url_follows_mesh_control_url(
    plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    control = plane.control
    token = (control.data_dir / "admin" / "dashboard.token").read_text().strip()
    monkeypatch.delenv("MESH_CONTROL_URL", raising=False)
    assert ok(control, "dashboard") == f"{control.url}/dashboard#token={token}\n"
    monkeypatch.setenv("MESH_CONTROL_URL", "https://mesh.example:7443,https://b.example:7443")
    assert ok(control, "dashboard") == f"https://mesh.example:7443/dashboard#token={token}\n"
