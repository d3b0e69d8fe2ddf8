"""Mutual TLS with SPIFFE identities, checked in both directions, against real processes."""

from __future__ import annotations

import ssl
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from meshlib.errors import PeerIdentityError
from meshlib.identity.spiffe import SpiffeId
from meshlib.integrations.httpx import IdentityTransport
from meshlib_control.ca.authority import CertificateAuthority
from tests.integration.harness import wait_endpoints

pytestmark = pytest.mark.integration


def test_mtls_identities_both_ways(services, workload):
    """The server sees the caller's SPIFFE ID and the client verified the server's."""
    orders = services("orders")
    client = workload("frontend")
    wait_endpoints(client, "orders")
    with client.client() as http:
        response = http.get("http://orders/items/1")
        assert response.status_code == 200
        body = response.json()
        assert body["peer"] == "spiffe://mesh.local/ns/default/sa/frontend"
        assert body["authenticated"] is True
        assert body["tls_version"] in (0x0303, 0x0304)
        sslobj = response.extensions["network_stream"].get_extra_info("ssl_object")
        uris = [v for k, v in sslobj.getpeercert()["subjectAltName"] if k == "URI"]
        assert uris == ["spiffe://mesh.local/ns/default/sa/orders"]
    assert orders.process.alive()


def test_async_client_reaches_service(services, workload):
    """mesh.async_client() resolves the service name and calls it over mTLS."""
    import asyncio

    services("orders")
    client = workload("frontend")
    wait_endpoints(client, "orders")

    async def call() -> httpx.Response:
        async with client.async_client() as http:
            return await http.get("http://orders/async")

    response = asyncio.run(call())
    assert response.status_code == 200
    assert response.json()["path"] == "/async"


def test_new_connections_never_build_httpcore_default_context(services, workload, monkeypatch):
    """Each new upstream connection uses the mesh's context, never httpcore's default one
    (which loads the CA stores: tens of ms and ~1 MiB per connection, found by benchmarks)."""
    import asyncio

    import httpcore._async.connection
    import httpcore._sync.connection

    def refuse() -> ssl.SSLContext:
        raise AssertionError("httpcore built its default SSL context")

    monkeypatch.setattr(httpcore._async.connection, "default_ssl_context", refuse)
    monkeypatch.setattr(httpcore._sync.connection, "default_ssl_context", refuse)
    services("orders")
    client = workload("frontend")
    wait_endpoints(client, "orders")

    async def calls() -> list[int]:
        async with client.async_client() as http:  # 8 concurrent calls: 8 new connections
            answers = await asyncio.gather(*(http.get(f"http://orders/c/{i}") for i in range(8)))
        return [a.status_code for a in answers]

    assert asyncio.run(calls()) == [200] * 8
    with client.client() as http:
        assert http.get("http://orders/sync").status_code == 200


def _foreign_context(tmp_path: Path) -> ssl.SSLContext:
    """A client context whose SVID comes from a CA the mesh does not trust."""
    foreign = CertificateAuthority.load_or_create(tmp_path / "foreign-ca", "mesh.local")
    issued, key = foreign.issue_local(
        SpiffeId.for_service("mesh.local", "default", "frontend"), timedelta(hours=1)
    )
    (tmp_path / "f.pem").write_bytes(issued.cert_pem)
    (tmp_path / "f.key").write_bytes(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the attacker does not care who the server is
    ctx.load_cert_chain(tmp_path / "f.pem", tmp_path / "f.key")
    return ctx


def test_client_certificate_from_another_ca_is_refused(services, tmp_path):
    """A client SVID signed by a foreign CA fails the server's TLS handshake."""
    orders = services("orders")
    with (
        httpx.Client(verify=_foreign_context(tmp_path)) as http,
        pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
    ):
        http.get(f"https://127.0.0.1:{orders.port}/items/1")


def test_client_without_certificate_is_refused(services):
    """A TLS client presenting no certificate is refused by the mTLS port."""
    orders = services("orders")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        httpx.Client(verify=ctx) as http,
        pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
    ):
        http.get(f"https://127.0.0.1:{orders.port}/items/1")


def test_server_with_wrong_identity_is_refused_before_sending(services, workload):
    """A server presenting another SPIFFE ID gets a PeerIdentityError and no request."""
    inventory = services("inventory")
    client = workload("frontend")
    wait_endpoints(client, "inventory")
    with client.client() as http:
        before = http.get("http://inventory/stats").json()["count"]
    impostor = IdentityTransport(
        expected="spiffe://mesh.local/ns/default/sa/orders", tls=client.tls.client_context
    )
    with httpx.Client(transport=impostor) as http, pytest.raises(PeerIdentityError) as caught:
        http.post(f"https://127.0.0.1:{inventory.port}/charge", content=b"x")
    assert caught.value.actual == "spiffe://mesh.local/ns/default/sa/inventory"
    assert caught.value.expected == "spiffe://mesh.local/ns/default/sa/orders"
    assert "no request was sent" in str(caught.value)
    with client.client() as http:
        assert http.get("http://inventory/stats").json()["count"] == before


def test_endpoint_taken_over_by_another_service_is_refused(services, workload, control):
    """When orders' address is served by inventory, the mesh client refuses to call it."""
    orders = services("orders")
    client = workload("frontend")
    wait_endpoints(client, "orders")
    port = orders.port
    orders.process.proc.kill()  # no deregistration: the stale endpoint stays for a while
    orders.process.proc.wait(5)
    services("inventory", port=port)
    with client.client() as http, pytest.raises(PeerIdentityError) as caught:
        http.get("http://orders/items/1")
    assert caught.value.actual == "spiffe://mesh.local/ns/default/sa/inventory"
