"""Recovery after SVID expiry: a control outage longer than the SVID lifetime needs no operator."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

import meshlib
from meshlib.errors import ControlPlaneError, MeshError
from meshlib.identity.keys import build_csr, generate_private_key
from meshlib.identity.spiffe import SpiffeId
from meshlib.runtime.cache import WorkloadCache
from meshlib.runtime.renewal import RebootstrapCredential, sign_with_credential
from tests.integration.harness import Control, Service, stop_all, wait_endpoints, wait_for
from tests.integration.sidecars import SidecarService, envoy_available, sid, xds_control

pytestmark = pytest.mark.integration

SVID_TTL = 6  # seconds; renewal is due at about half of it
RECOVERY_SECONDS = 30.0
MAX_ROUNDS = 300


def _chain(mesh: meshlib.Mesh, via: str, to: str) -> str | None:
    """None when *via* reached *to* over the mesh (new connections both hops), else why not."""
    try:
        # pools of its own: a new handshake with *via* (which does the same towards *to*)
        with httpx.Client(transport=mesh.transport(own_pools=True)) as http:
            response = http.get(f"http://{via}/chain", params={"to": to, "path": "/ping"})
    except Exception as exc:  # any failure is a reason to keep waiting
        return f"{via}: {exc!r}"
    if response.status_code != 200:
        return f"{via}: {response.status_code} {response.text[:200]}"
    body: dict[str, Any] = response.json()
    if body.get("status") != 200:
        return f"{via} -> {to}: {body.get('error')} {body.get('message')}"
    return None


def _instance_ids(control: Control) -> dict[str, str]:
    return {i["id"]: i["spiffeId"] for i in control.instances()}


def _issued_after(control: Control, spiffe_id: str, moment: datetime) -> bool:
    certificates = json.loads(control.ok("get", "certificates", "-o", "json"))
    return any(
        c["spiffeId"] == spiffe_id and datetime.fromisoformat(c["issuedAt"]) > moment
        for c in certificates
    )


def test_workloads_rejoin_after_their_svids_expired_with_control_down(tmp_path: Path):
    """Control down longer than the SVID lifetime, then back: all rejoin, traffic recovers."""
    control = Control(tmp_path / "control", "--svid-ttl", f"{SVID_TTL}s")
    control.start()
    alpha = Service(control, "alpha", tmp_path, app="tests.integration.fault_app").start()
    beta = Service(control, "beta", tmp_path, app="tests.integration.fault_app").start()
    frontend = meshlib.Mesh(
        service="frontend",
        control_url=control.url,
        token=control.token("frontend"),
        data_dir=tmp_path / "fe",
        start_timeout=20,
    ).start()
    try:
        wait_endpoints(frontend, "alpha")
        wait_endpoints(frontend, "beta")
        wait_for(lambda: _chain(frontend, "alpha", "beta") is None, 20, "alpha -> beta")
        wait_for(lambda: _chain(frontend, "beta", "alpha") is None, 20, "beta -> alpha")
        wait_for(lambda: len(_instance_ids(control)) == 3, 20, "three registered instances")
        before = _instance_ids(control)

        control.stop()
        # Every SVID was issued before the stop, so all have expired SVID_TTL + margin later.
        time.sleep(SVID_TTL + 2)
        first_serial = frontend.tls.svid.serial
        assert frontend.tls.svid.not_after < datetime.now(UTC)
        wait_for(
            lambda: "SVID expired at" in (frontend.last_error or ""),
            10,
            "the frontend to say its SVID expired",
        )

        restarted = datetime.now(UTC)
        control.start()
        deadline = time.monotonic() + RECOVERY_SECONDS
        problems: list[str | None] = ["not tried"]
        for _ in range(MAX_ROUNDS):
            if time.monotonic() > deadline:
                break
            problems = [_chain(frontend, "alpha", "beta"), _chain(frontend, "beta", "alpha")]
            if problems == [None, None]:
                break
            time.sleep(0.2)
        assert problems == [None, None], (
            f"{problems}; frontend: {frontend.last_error}\n{alpha.process.output()[-3000:]}"
        )

        # Every workload rejoined with a new SVID and kept its instance id.
        assert frontend.tls.svid.serial != first_serial
        assert frontend.tls.svid.not_after > datetime.now(UTC)
        for spiffe_id in before.values():
            assert _issued_after(control, spiffe_id, restarted), spiffe_id
        wait_for(
            lambda: set(before.items()) <= set(_instance_ids(control).items()),
            20,
            "the same instance ids registered again",
        )
        assert set(_instance_ids(control)) == set(before)
        log = control.process.output()
        for spiffe_id in before.values():
            assert f"{spiffe_id} rejoined with re-bootstrap credential" in log
    finally:
        frontend.close()
        stop_all([alpha.process, beta.process])
        control.stop()


def _sign(control: Control, cache_dir: Path, credential: RebootstrapCredential, service: str):
    """/v1/sign with *credential* and a fresh CSR for *service*, as a rejoining agent does."""
    svid = WorkloadCache(cache_dir).load_svid(allow_expired=True)
    assert svid is not None
    csr = build_csr(generate_private_key(), SpiffeId.for_service("mesh.local", "default", service))
    return asyncio.run(
        sign_with_credential(
            url=control.url,
            svid=svid,
            credential=credential,
            csr_pem=csr,
            instance_id="test",
            files_dir=cache_dir,
        )
    )


def test_spent_or_foreign_rebootstrap_credentials_are_refused(control, tmp_path: Path):
    """A foreign or replayed credential gets a 4xx naming why, and spends nothing."""
    meshes = {
        name: meshlib.Mesh(
            service=name,
            control_url=control.url,
            token=control.token(name),
            data_dir=tmp_path / name,
            start_timeout=20,
        ).start()
        for name in ("orders", "billing")
    }
    for mesh in meshes.values():
        mesh.close()
    orders = WorkloadCache(tmp_path / "orders").load_rebootstrap()
    assert orders is not None and orders.spiffe_id.endswith("/sa/orders")
    assert (tmp_path / "orders" / "rebootstrap.json").stat().st_mode & 0o777 == 0o600

    # Foreign: orders' credential for a billing CSR.
    with pytest.raises(ControlPlaneError) as foreign:
        _sign(control, tmp_path / "orders", orders, "billing")
    assert foreign.value.status == 403
    assert f"re-bootstrap credential {orders.credential_id} belongs to" in str(foreign.value)
    assert "/sa/orders, not spiffe://mesh.local/ns/default/sa/billing" in str(foreign.value)

    # It spent nothing: the same credential still buys orders one SVID, and a successor.
    answer = _sign(control, tmp_path / "orders", orders, "orders")
    assert answer["spiffeId"] == "spiffe://mesh.local/ns/default/sa/orders"
    successor = RebootstrapCredential.from_answer(answer)
    assert successor is not None and successor.credential_id != orders.credential_id

    # Spent: a replay is refused as such, and spends nothing either.
    with pytest.raises(ControlPlaneError) as spent:
        _sign(control, tmp_path / "orders", orders, "orders")
    assert spent.value.status == 401
    assert f"re-bootstrap credential {orders.credential_id} was already used at" in str(spent.value)
    again = _sign(control, tmp_path / "orders", successor, "orders")
    assert again["spiffeId"] == "spiffe://mesh.local/ns/default/sa/orders"


def test_revoked_credential_refused_and_the_restarted_agent_says_why(tmp_path: Path):
    """After `meshctl token revoke`, a workload with an expired SVID is told exactly that."""
    control = Control(tmp_path / "control", "--svid-ttl", "2s")
    control.start()
    try:
        first = meshlib.Mesh(
            service="orders",
            control_url=control.url,
            token=control.token("orders"),
            data_dir=tmp_path / "orders",
            start_timeout=20,
        ).start()
        first.close()
        revoked = control.ok("token", "revoke", "--service", "orders")
        assert "1 re-bootstrap credential(s) revoked" in revoked
        cache = WorkloadCache(tmp_path / "orders")
        svid = cache.load_svid(allow_expired=True)
        assert svid is not None
        wait_for(lambda: svid.not_after < datetime.now(UTC), 5, "the cached SVID to expire")
        # No join token: the revoked credential was its only way back.
        again = meshlib.Mesh(
            service="orders",
            control_url=control.url,
            data_dir=tmp_path / "orders",
            start_timeout=20,
        )
        with pytest.raises(MeshError) as refused:
            again.start()
        again.close()
        message = str(refused.value)
        assert message.startswith(f"SVID expired at {svid.not_after.isoformat()}, and ")
        assert "the re-bootstrap credential was refused: control service answered 401" in message
        assert "is unknown (never issued, replaced by a newer one, or revoked)" in message
        assert "unreachable" not in message
    finally:
        control.stop()


@pytest.mark.skipif(not envoy_available(), reason="envoy binary not installed ([sidecar])")
def test_sidecar_rejoins_after_its_svid_expired_with_control_down(tmp_path: Path):
    """The sidecar agent rejoins the same way; Envoy gets the new SVID and serves again."""
    control = xds_control(tmp_path / "control", "--svid-ttl", f"{SVID_TTL}s")
    control.start()
    orders = SidecarService(control, "orders", tmp_path).start()
    frontend = meshlib.Mesh(
        service="frontend",
        control_url=control.url,
        token=control.token("frontend"),
        data_dir=tmp_path / "fe",
        start_timeout=20,
    ).start()

    def call() -> str | None:
        try:
            # pools of its own: a new handshake with orders' Envoy each time
            with httpx.Client(transport=frontend.transport(own_pools=True)) as http:
                response = http.get("http://orders/ping")
        except Exception as exc:  # any failure is a reason to keep waiting
            return repr(exc)
        return None if response.status_code == 200 else f"{response.status_code}"

    try:
        wait_endpoints(frontend, "orders")
        wait_for(lambda: call() is None, 20, "frontend -> orders' sidecar")
        first = orders.sidecar.serial()
        control.stop()
        time.sleep(SVID_TTL + 2)
        control.start()
        deadline = time.monotonic() + RECOVERY_SECONDS
        problem: str | None = "not tried"
        for _ in range(MAX_ROUNDS):
            if time.monotonic() > deadline:
                break
            problem = call()
            if problem is None:
                break
            time.sleep(0.2)
        assert problem is None, f"{problem}\n{orders.sidecar.process.output()[-3000:]}"
        assert orders.sidecar.serial() != first
        assert f"{sid('orders')} rejoined with re-bootstrap credential" in (
            control.process.output()
        )
    finally:
        frontend.close()
        orders.stop()
        control.stop()
