"""Root CA rotation with overlap, under continuous traffic, against real processes.

A control replica signs through an intermediate of root A (both from `meshctl ca`); a
library service, an Envoy sidecar service (the real Envoy) and an in-process library
client, each given two control addresses, talk to each other all along. Then: add root B
(bundle A+B, everyone learns it from the snapshot, `meshctl check` shows when) → switch
signing, rolling: a second replica on the same store signs from B's intermediate, the A
replica stops, everyone fails over and renews from B while A-signed SVIDs still verify
(`meshctl check` shows when every SVID is under B) → retire A (bundle B only): an A-signed
peer is refused by the library server and by Envoy, and a workload joins with a token made
before the switch. No request fails at any step.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509

import meshlib
from meshlib.identity.spiffe import SpiffeId
from meshlib.identity.svid import certificate_fingerprint, load_pem_certificates
from meshlib_control.admin_client import AdminClient
from meshlib_control.ca.authority import CertificateAuthority
from meshlib_control.ca.offline import init_root, issue_intermediate
from meshlib_control.ca.tokens import parse_token
from tests.integration.harness import Control, Service, free_port, wait_endpoints, wait_for
from tests.integration.sidecars import APP, SidecarService, envoy_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not envoy_available(), reason="envoy binary not installed ([sidecar])"),
]

TD = "mesh.local"
REFUSED = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)
# Short SVIDs so that the old ones age out within the test (renewal at 40-60 %).
SVID_TTL = "12s"


class Traffic(threading.Thread):
    """Library → library, library → Envoy and Envoy → library, on fresh connections."""

    def __init__(self, calls: dict[str, Callable[[], httpx.Response]]) -> None:
        super().__init__(daemon=True, name="rotation-traffic")
        self.calls = calls
        self.phase = "A"
        self.failures: list[str] = []
        self.counts: Counter[str] = Counter()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for name, call in self.calls.items():
                try:
                    status = call().status_code
                    if status != 200:
                        self.failures.append(f"[{self.phase}] {name}: HTTP {status}")
                except Exception as exc:  # every failure counts, whatever its kind
                    self.failures.append(f"[{self.phase}] {name}: {exc!r}")
                self.counts[self.phase, name] += 1
            time.sleep(0.02)


def _leaf_issuer(ctx: ssl.SSLContext, port: int) -> str:
    """The issuer of the certificate the server on *port* presents in a fresh handshake."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(True)
    assert der is not None
    return x509.load_der_x509_certificate(der).issuer.rfc4514_string()


def _check(control: Control, name: str) -> dict[str, str]:
    """One line of `meshctl check` (its admin API call, in-process: no CLI start-up)."""
    client = AdminClient(control.data_dir, control.url)
    try:
        checks = client.call("GET", "/v1/admin/check")["checks"]
    finally:
        client.close()
    return next(c for c in checks if c["name"] == name)


def _bundle_applied(control: Control, roots: int, instances: int) -> bool:
    check = _check(control, "trust bundle")
    return check["status"] == "ok" and check["message"] == (
        f"{roots} root(s); {instances} instance(s) trust exactly this bundle"
    )


def _client_context(ca: CertificateAuthority, tmp: Path, name: str) -> ssl.SSLContext:
    """A client presenting a frontend SVID (leaf + intermediate) from *ca*."""
    issued, key = ca.issue_local(
        SpiffeId.for_service(TD, "default", "frontend"), timedelta(hours=1)
    )
    (tmp / f"{name}.pem").write_bytes(issued.cert_pem)
    (tmp / f"{name}.key").write_bytes(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # only the server's view of this client is tested
    ctx.load_cert_chain(tmp / f"{name}.pem", tmp / f"{name}.key")
    return ctx


def _get(ctx: ssl.SSLContext, port: int) -> httpx.Response:
    with httpx.Client(verify=ctx, timeout=5) as http:
        return http.get(f"https://127.0.0.1:{port}/direct", headers={"host": "side"})


def _refused(ctx: ssl.SSLContext, port: int) -> bool:
    try:
        _get(ctx, port)
    except REFUSED:
        return True
    return False


def test_root_rotation_with_overlap_under_traffic(tmp_path: Path) -> None:
    """add B → sign from B → retire A: 0 failed requests between library and Envoy
    services; A-signed peers are refused once A is retired; old tokens still join."""
    for root in ("A", "B"):  # what `meshctl ca init` / `ca intermediate` write
        init_root(tmp_path / f"root{root}", TD, name=f"root {root}")
        issue_intermediate(tmp_path / f"root{root}", tmp_path / f"int{root}", TD, name=f"r{root}")
    fingerprint = {
        r: certificate_fingerprint((tmp_path / f"root{r}" / "root.pem").read_bytes())
        for r in ("A", "B")
    }
    issuer = {r: f"CN=meshlib intermediate r{r}" for r in ("A", "B")}
    xds = {r: free_port() for r in ("A", "B")}

    def replica(name: str) -> Control:
        """A control replica on the shared store, signing with root *name*'s intermediate."""
        return Control(
            tmp_path / f"replica{name}",
            "--store", f"sqlite:///{tmp_path / 'mesh.db'}",
            "--svid-ttl", SVID_TTL,
            "--instance-ttl", "15s",  # a loaded 2-core machine must not expire a live lease
            "--scrape-interval", "1",
            "--xds-listen", f"127.0.0.1:{xds[name]}",
            "--ca-cert", str(tmp_path / f"int{name}" / "ca.pem"),
            "--ca-key", str(tmp_path / f"int{name}" / "ca.key"),
        )  # fmt: skip

    one, two = replica("A"), replica("B")
    urls = f"{one.url},{two.url}"
    one.start()
    lib = Service(one, "lib", tmp_path, app=APP, env={"MESH_CONTROL_URL": urls})
    side = SidecarService(one, "side", tmp_path)
    args = side.sidecar.process.args  # `meshctl sidecar --control A,B --xds-address …`
    del args[args.index("--control") : args.index("--control") + 2]
    args += ["--control", urls, "--xds-address", f"127.0.0.1:{xds['A']},127.0.0.1:{xds['B']}"]
    late: Service | None = None
    frontend: meshlib.Mesh | None = None
    traffic: Traffic | None = None
    try:
        lib.start()
        side.start()
        frontend = meshlib.Mesh(
            service="frontend",
            control_url=[one.url, two.url],
            token=one.token("frontend"),
            data_dir=tmp_path / "frontend",
            start_timeout=20,
        ).start()
        mesh = frontend
        wait_endpoints(mesh, "lib")
        wait_endpoints(mesh, "side")

        def fresh(url: str) -> httpx.Response:
            with mesh.client() as http:
                return http.get(url)

        wait_for(lambda: side.sidecar.get("lib", "/warm").status_code == 200, 20, "Envoy → lib")
        assert _leaf_issuer(mesh.tls.client_context(), lib.port) == issuer["A"]
        traffic = Traffic(
            {
                "frontend → lib": lambda: fresh("http://lib/t"),
                "frontend → side (Envoy)": lambda: fresh("http://side/t"),
                "side (Envoy) → lib": lambda: side.sidecar.get("lib", "/t", timeout=5),
            }
        )
        traffic.start()
        wait_for(lambda: _bundle_applied(one, 1, 3), 20, "everyone on bundle A")

        # 1. Add root B beside A: every workload and sidecar learns A+B from its snapshot.
        traffic.phase = "A+B"
        out = one.ok("ca", "add-root", "--cert", str(tmp_path / "rootB" / "root.pem"))
        assert f"{fingerprint['B']}" in out
        wait_for(lambda: _bundle_applied(one, 2, 3), 20, "everyone on bundle A+B")
        old_token = one.token("late")  # made before the switch: pins A and B
        assert parse_token(old_token).ca_fingerprints == (fingerprint["A"], fingerprint["B"])
        a_signed = _client_context(
            CertificateAuthority.from_files(
                tmp_path / "intA" / "ca.pem", tmp_path / "intA" / "ca.key", TD
            ),
            tmp_path,
            "a-signed",
        )

        # 2. Switch signing to B, rolling: a replica signing from B's intermediate joins
        # (it may: B is in the bundle), the A replica stops, workloads and Envoy fail over
        # and renew from B while A-signed SVIDs still verify.
        traffic.phase = "signing B"
        two.start()
        status = json.loads(two.ok("ca", "status", "-o", "json"))
        assert status["signingRoot"] == fingerprint["B"]
        assert [r["signing"] for r in status["roots"]] == [False, True]
        one.stop()
        # What the operator watches before retiring A: every SVID under B.
        wait_for(
            lambda: (
                (c := _check(two, "instance SVID roots"))["status"] == "ok"
                and c["message"].startswith("3 under 'root B'")
            ),
            40,
            "meshctl check: every instance SVID under root B",
            interval=0.5,
        )
        assert (
            issuer["B"]
            == load_pem_certificates(mesh.tls.svid.cert_chain_pem)[0].issuer.rfc4514_string()
        )
        assert _leaf_issuer(mesh.tls.client_context(), lib.port) == issuer["B"]
        assert _leaf_issuer(mesh.tls.client_context(), side.sidecar.inbound_port) == issuer["B"]
        assert _get(a_signed, lib.port).status_code == 200  # A still trusted here
        assert _get(a_signed, side.sidecar.inbound_port).status_code == 200

        # 3. Retire A: the bundle is B only; A-signed peers are refused everywhere.
        traffic.phase = "B only"
        refused = two.meshctl("ca", "retire-root", fingerprint["B"])
        assert refused.returncode == 1 and "signs from" in refused.stderr
        two.ok("ca", "retire-root", fingerprint["A"])
        wait_for(lambda: _bundle_applied(two, 1, 3), 20, "everyone on bundle B")
        wait_for(lambda: _refused(a_signed, lib.port), 10, "library server refuses A")
        wait_for(lambda: _refused(a_signed, side.sidecar.inbound_port), 15, "Envoy refuses A")
        status = json.loads(two.ok("ca", "status", "-o", "json"))
        assert [r["fingerprint"] for r in status["roots"]] == [fingerprint["B"]]

        # The token made before the switch (pinning A and B) still joins a new workload.
        late = Service(two, "late", tmp_path, app=APP, token=old_token)
        late.start()
        wait_endpoints(mesh, "late")
        assert fresh("http://late/joined").status_code == 200
        time.sleep(1.0)  # a last second of traffic on bundle B alone
    finally:
        if traffic is not None:
            traffic.stop.set()
            traffic.join(15)
        if frontend is not None:
            frontend.close()
        for service in (late, lib):
            if service is not None:
                service.stop()
        side.stop()
        one.stop()
        two.stop()
    assert traffic is not None
    assert traffic.failures == []
    for phase in ("A+B", "signing B", "B only"):
        for name in traffic.calls:
            assert traffic.counts[phase, name] >= 5, (phase, name, traffic.counts)
