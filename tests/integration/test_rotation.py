"""Certificates rotate under continuous traffic without a failed request."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

import meshlib
from tests.integration.harness import Control, Service, wait_endpoints

pytestmark = pytest.mark.integration

TRAFFIC_SECONDS = 20.0  # at most; the run ends 50 requests after both sides have rotated
MAX_REQUESTS = 20_000


def _serial(response) -> int:
    """The serial number of the certificate the server presented on this connection."""
    from cryptography import x509

    sslobj = response.extensions["network_stream"].get_extra_info("ssl_object")
    return x509.load_der_x509_certificate(sslobj.getpeercert(True)).serial_number


def test_rotation_under_traffic_has_zero_failures(tmp_path: Path):
    """With 10 s SVIDs, both sides renew mid-run and every request still succeeds."""
    control = Control(tmp_path / "control", "--svid-ttl", "10s", "--instance-ttl", "5s")
    control.start()
    orders = Service(control, "orders", tmp_path).start()
    client = meshlib.Mesh(
        service="frontend",
        control_url=control.url,
        token=control.token("frontend"),
        data_dir=tmp_path / "fe",
    ).start()
    try:
        wait_endpoints(client, "orders")
        first_client_serial = client.tls.svid.serial
        server_serials: set[int] = set()
        failures: list[str] = []
        sent, stop_at = 0, MAX_REQUESTS
        deadline = time.monotonic() + TRAFFIC_SECONDS
        pooled = client.client()
        while time.monotonic() < deadline and sent < stop_at:
            # Half the calls reuse a pooled connection, half open a new one.
            try:
                response = pooled.get(f"http://orders/items/{sent}")
                if response.status_code != 200:
                    failures.append(f"pooled {response.status_code}")
                # a transport with pools of its own: a new connection, a new handshake
                with httpx.Client(transport=client.transport(own_pools=True)) as fresh:
                    response = fresh.get(f"http://orders/items/{sent}")
                    server_serials.add(_serial(response))
                    if response.status_code != 200:
                        failures.append(f"fresh {response.status_code}")
            except Exception as exc:  # every failure counts, whatever its kind
                failures.append(repr(exc))
            sent += 2
            if (
                stop_at == MAX_REQUESTS
                and client.tls.svid.serial != first_client_serial
                and len(server_serials) >= 2
            ):
                stop_at = max(sent + 50, 202)  # both rotated: a few more, then stop
            time.sleep(0.01)
        pooled.close()
        assert failures == []
        assert sent > 200
        assert client.tls.svid.serial != first_client_serial, "client SVID never rotated"
        assert len(server_serials) >= 2, "server SVID never rotated"
    finally:
        client.close()
        orders.stop()
        control.stop()
