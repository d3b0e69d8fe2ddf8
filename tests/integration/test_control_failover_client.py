"""The control client's failover against a real control service and a replica that 5xxes.

The failing replica is a TLS server presenting a real control-service certificate (signed by
the control service's own CA, ``spiffe://mesh.local/control``), so the client's identity
check passes and only the 503 it answers makes the client move on.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import pytest

from meshlib.errors import ControlPlaneError, PeerIdentityError
from meshlib.identity.keys import build_csr, generate_private_key, private_key_pem
from meshlib.identity.spiffe import SpiffeId
from meshlib.identity.svid import SVID
from meshlib.identity.tls import build_client_context
from meshlib.runtime.control_client import ControlClient
from tests.attack import MALLORY_ID, HostileServer, mint
from tests.integration.harness import Control, free_port

pytestmark = pytest.mark.integration

CONTROL_ID = "spiffe://mesh.local/control"


class Unavailable(HostileServer):
    """A control replica that answers every request 503 (a replica that lost its store)."""

    def _answer(self, raw: object) -> None:
        import socket

        assert isinstance(raw, socket.socket)
        raw.settimeout(2)
        try:
            with self._context.wrap_socket(raw, server_side=True) as tls:
                if not tls.recv(65536):
                    return
                self.requests += 1
                body = b'{"error": {"message": "store unavailable"}}'
                tls.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
                )
        except (OSError, ssl.SSLError):
            return


class Silent(HostileServer):
    """A replica that is there but says nothing (stopped, partitioned, stuck): it completes
    the TLS handshake of its first connection, reads, and never answers."""

    def _answer(self, raw: object) -> None:
        import socket

        assert isinstance(raw, socket.socket)
        raw.settimeout(0.2)
        try:
            with self._context.wrap_socket(raw, server_side=True) as tls:
                while not self._stop.is_set():
                    try:
                        if not tls.recv(65536):
                            return  # the client gave up and closed
                        self.requests += 1
                    except TimeoutError:
                        continue
        except (OSError, ssl.SSLError):
            return


def _svid(control: Control, tmp_path: Path, service: str) -> SVID:
    """An SVID for *service* from *control*, signed with a join token."""

    async def sign() -> SVID:
        bundle = (control.data_dir / "ca.pem").read_bytes()
        anonymous = build_client_context(None, bundle, tmp_path)
        client = ControlClient(control.url, expected=CONTROL_ID, tls=lambda: anonymous)
        key = generate_private_key()
        try:
            answer = await client.sign(
                build_csr(key, SpiffeId.for_service("mesh.local", "default", service)),
                token=control.token(service),
            )
        finally:
            await client.aclose()
        return SVID.from_pem(
            answer["certificate"].encode(), private_key_pem(key), answer["bundle"].encode()
        )

    return asyncio.run(sign())


def test_a_watch_parked_on_a_silent_replica_follows_the_client_to_a_live_one(
    control: Control, tmp_path: Path
):
    """The heartbeat times out on the silent replica and moves on; the long-poll parked there
    (it would wait 30 s) is re-issued on the live replica at once, with its held version."""
    svid = _svid(control, tmp_path, "orders")
    mtls = build_client_context(svid, svid.bundle_pem, tmp_path)
    cert = mint(control.data_dir, CONTROL_ID, tmp_path / "bad", name="control")
    with Silent(cert) as silent:

        async def scenario() -> tuple[dict[str, object] | None, float, str]:
            client = ControlClient(
                [f"https://127.0.0.1:{silent.port}", control.url],
                expected=CONTROL_ID,
                tls=lambda: mtls,
                request_timeout=1.0,
            )
            try:
                started = time.monotonic()
                watch = asyncio.ensure_future(client.watch("", 20.0, None))
                await asyncio.sleep(0.3)
                assert not watch.done() and client.url != control.url
                await client.register("abc123", {"address": "127.0.0.1", "port": 9})
                body = await asyncio.wait_for(watch, 5.0)
                return body, time.monotonic() - started, client.url
            finally:
                await client.aclose()

        body, elapsed, current = asyncio.run(scenario())
        assert silent.requests >= 1  # the watch did reach it, and got nothing back
    assert current == control.url
    assert body is not None and body["service"] == "orders" and body["version"]
    assert elapsed < 5.0, elapsed


def test_refused_then_503_then_a_live_replica_and_the_client_sticks(
    control: Control, tmp_path: Path
):
    """Refused and 5xx addresses are passed over in one call; the client then stays on the
    replica that answered, a 4xx from it is returned as is, and nothing re-tries the others."""
    refused = f"https://127.0.0.1:{free_port()}"
    cert = mint(control.data_dir, CONTROL_ID, tmp_path / "bad", name="control")
    token = control.token("orders")
    with Unavailable(cert) as unavailable:
        failing = f"https://127.0.0.1:{unavailable.port}"
        bundle = (control.data_dir / "ca.pem").read_bytes()
        anonymous = build_client_context(None, bundle, tmp_path)
        order = [refused, failing, control.url]

        async def scenario() -> dict[str, object]:
            first = ControlClient(order, expected=CONTROL_ID, tls=lambda: anonymous)
            key = generate_private_key()
            spiffe_id = SpiffeId.for_service("mesh.local", "default", "orders")
            try:
                answer = await first.sign(
                    build_csr(key, spiffe_id), token=token, instance_id="abc123"
                )
                after_sign = (first.url, first.failovers, unavailable.requests)
                with pytest.raises(ControlPlaneError) as refusal:
                    await first.sign(build_csr(key, spiffe_id), token="mesh1.a.b.c")
                after_refusal = (first.url, first.failovers, unavailable.requests)
            finally:
                await first.aclose()
            svid = SVID.from_pem(
                answer["certificate"].encode(), private_key_pem(key), answer["bundle"].encode()
            )
            mtls = build_client_context(svid, svid.bundle_pem, tmp_path)
            second = ControlClient(order, expected=CONTROL_ID, tls=lambda: mtls)
            try:
                ttl = await second.register("abc123", {"address": "127.0.0.1", "port": 9})
                await second.report("abc123", "v1", None)
                await second.register("abc123", {"address": "127.0.0.1", "port": 9})
                end = (second.url, second.failovers, unavailable.requests)
            finally:
                await second.aclose()
            return {
                "after_sign": after_sign,
                "refusal": refusal.value,
                "after_refusal": after_refusal,
                "ttl": ttl,
                "end": end,
            }

        result = asyncio.run(scenario())
    assert result["after_sign"] == (control.url, 1, 1)
    refusal = result["refusal"]
    assert isinstance(refusal, ControlPlaneError)
    assert refusal.status is not None and 400 <= refusal.status < 500, refusal
    # A 4xx is an answer: returned from the live replica, the others not asked again.
    assert result["after_refusal"] == (control.url, 1, 1)
    assert result["ttl"] == {"ttlSeconds": 5.0}
    # A fresh client passes over the two again once, then sticks for every later call.
    assert result["end"] == (control.url, 1, 2)
    assert [i["id"] for i in control.instances() if i["service"] == "orders"] == ["abc123"]


def test_every_replica_failing_reports_the_last_answer_and_how_many_were_tried(
    control: Control, tmp_path: Path
):
    """With no replica answering, the error is the last one's (its 503 status kept)."""
    cert = mint(control.data_dir, CONTROL_ID, tmp_path / "bad", name="control")
    bundle = (control.data_dir / "ca.pem").read_bytes()
    ctx = build_client_context(None, bundle, tmp_path)
    with Unavailable(cert) as unavailable:

        async def scenario() -> ControlPlaneError:
            client = ControlClient(
                [f"https://127.0.0.1:{free_port()}", f"https://127.0.0.1:{unavailable.port}"],
                expected=CONTROL_ID,
                tls=lambda: ctx,
            )
            try:
                with pytest.raises(ControlPlaneError) as info:
                    await client.sign(b"-", token="mesh1.a.b.c")
                return info.value
            finally:
                await client.aclose()

        error = asyncio.run(scenario())
    assert error.status == 503
    assert "store unavailable" in str(error)
    assert "no control address answered: tried 2 of 2" in str(error)


def test_a_replica_that_is_not_the_control_service_is_passed_over(control: Control, tmp_path: Path):
    """An address answering with another identity gets no request; the next one serves.
    Alone, it raises PeerIdentityError as a single address always did."""
    impostor_cert = mint(control.data_dir, MALLORY_ID, tmp_path / "bad", name="mallory")
    bundle = (control.data_dir / "ca.pem").read_bytes()
    anonymous = build_client_context(None, bundle, tmp_path)
    token = control.token("orders")
    with HostileServer(impostor_cert) as impostor:
        impostor_url = f"https://127.0.0.1:{impostor.port}"

        async def scenario() -> tuple[str, str]:
            key = generate_private_key()
            csr = build_csr(key, SpiffeId.for_service("mesh.local", "default", "orders"))
            both = ControlClient(
                [impostor_url, control.url], expected=CONTROL_ID, tls=lambda: anonymous
            )
            alone = ControlClient(impostor_url, expected=CONTROL_ID, tls=lambda: anonymous)
            try:
                answer = await both.sign(csr, token=token)
                with pytest.raises(PeerIdentityError) as caught:
                    await alone.sign(csr, token=token)
                return str(answer["spiffeId"]), str(caught.value)
            finally:
                await both.aclose()
                await alone.aclose()

        spiffe_id, refusal = asyncio.run(scenario())
        assert impostor.requests == 0
    assert spiffe_id == "spiffe://mesh.local/ns/default/sa/orders"
    assert MALLORY_ID in refusal and CONTROL_ID in refusal
