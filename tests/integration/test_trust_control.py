"""The control service under attack from a workload holding a valid SVID of its own.

Every test runs a real ``meshctl control serve`` on 127.0.0.1 and talks to it over real
mTLS with SVIDs it signed (issue 11): ADS node identity, instance ids owned for life,
per-identity quotas, an observer that trusts no admin page, and request bodies limited
before they are parsed. Each refusal names the field and the reason, and stored state is
shown unchanged after it.
"""

from __future__ import annotations

import json
import queue
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.harness import Control, free_port, wait_for

pytestmark = pytest.mark.integration

TD = "mesh.local"


def sid(service: str) -> str:
    return f"spiffe://{TD}/ns/default/sa/{service}"


def _csr(key: ec.EllipticCurvePrivateKey, service: str) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(sid(service))]),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _server_context(control: Control) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(control.data_dir / "ca.pem"))
    ctx.check_hostname = False  # the chain is verified; the control's SVID names 127.0.0.1
    return ctx


class Workload:
    """An SVID for *service*, obtained the way an agent does (key here, CSR + join token)."""

    def __init__(self, control: Control, service: str, workdir: Path) -> None:
        self.control = control
        self.service = service
        key = ec.generate_private_key(ec.SECP256R1())
        answer = httpx.post(
            f"{control.url}/v1/sign",
            json={"csr": _csr(key, service), "token": control.token(service)},
            verify=_server_context(control),
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        self.cert_pem = answer.json()["certificate"].encode()
        self.bundle_pem = answer.json()["bundle"].encode()
        self.key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        workdir.mkdir(parents=True, exist_ok=True)
        self.cert_file = workdir / f"{service}.pem"
        self.key_file = workdir / f"{service}.key"
        self.cert_file.write_bytes(self.cert_pem)
        self.key_file.write_bytes(self.key_pem)

    def context(self) -> ssl.SSLContext:
        ctx = _server_context(self.control)
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        return ctx

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.control.url, verify=self.context(), timeout=15)

    def register(self, instance_id: str, **body: Any) -> httpx.Response:
        body.setdefault("address", "127.0.0.1")
        body.setdefault("port", 9000)
        with self.http() as http:
            return http.put(f"/v1/instances/{instance_id}", json=body)


def _error(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert isinstance(error, dict)
    return error


def _instances(control: Control) -> dict[str, dict[str, Any]]:
    return {i["id"]: i for i in control.instances()}


def _strict_control(tmp_path: Path, lease: str) -> Iterator[Control]:
    plane = Control(
        tmp_path / "control",
        "--instance-ttl",
        lease,
        "--xds-listen",
        f"127.0.0.1:{free_port()}",
        "--max-instances-per-identity",
        "2",
        "--max-watch-keys-per-identity",
        "2",
        "--max-deps",
        "4",
        "--scrape-max-bytes",
        str(256 * 1024),
    )
    plane.start()
    yield plane
    plane.stop()


@pytest.fixture
def strict_control(tmp_path: Path) -> Iterator[Control]:
    """A control service with small quotas, a 1 s lease and ADS."""
    yield from _strict_control(tmp_path, "1s")


@pytest.fixture
def ads_control(tmp_path: Path) -> Iterator[Control]:
    """The same with a 60 s lease, so records outlive a slow ADS exchange on a loaded machine."""
    yield from _strict_control(tmp_path, "60s")


# --------------------------------------------------------------------- ADS node identity


def _ads_call(control: Control, workload: Workload, node_id: str, service: str) -> Any:
    """An ADS stream as *workload* naming *node_id*; returns (call, requests queue)."""
    from google.protobuf import struct_pb2

    from meshlib_control.xds.protos.envoy.config.core.v3 import base_pb2
    from meshlib_control.xds.protos.envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    address = httpx.get(f"{control.url}/v1/bundle", verify=_server_context(control)).json()[
        "xdsAddress"
    ]
    credentials = grpc.ssl_channel_credentials(
        root_certificates=workload.bundle_pem,
        private_key=workload.key_pem,
        certificate_chain=workload.cert_pem,
    )
    channel = grpc.secure_channel(
        address, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    )
    metadata = struct_pb2.Struct()
    metadata.update({"inboundPort": 15006, "appPort": 8080, "outboundPort": 15001})
    node = base_pb2.Node(id=node_id, cluster=service, metadata=metadata)
    requests: queue.Queue[Any] = queue.Queue()
    cds = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    requests.put(discovery_pb2.DiscoveryRequest(node=node, type_url=cds))

    def send() -> Iterator[Any]:
        for _ in range(10):  # bounded: a handful of requests per test
            item = requests.get(timeout=15)
            if item is None:
                return
            yield item

    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    return channel, stub.StreamAggregatedResources(send(), timeout=15), requests


def test_ads_stream_naming_another_identitys_instance_is_refused(ads_control, tmp_path):
    """alpha's SVID cannot open ADS as beta's instance: PERMISSION_DENIED, nothing written
    (no NACK into beta's record, no sidecar entry relabelled as alpha)."""
    from google.rpc import status_pb2

    from meshlib_control.xds.protos.envoy.service.discovery.v3 import discovery_pb2

    alpha = Workload(ads_control, "alpha", tmp_path / "alpha")
    beta = Workload(ads_control, "beta", tmp_path / "beta")
    assert beta.register("beta1", mode="sidecar").status_code == 200
    before = _instances(ads_control)["beta1"]

    channel, call, requests = _ads_call(ads_control, alpha, "beta1", "alpha")
    try:
        with pytest.raises(grpc.RpcError) as refused:
            first = next(call)  # the old server answered here, then took the NACK below
            requests.put(
                discovery_pb2.DiscoveryRequest(
                    type_url=first.type_url,
                    response_nonce=first.nonce,
                    error_detail=status_pb2.Status(code=13, message="forged NACK"),
                )
            )
            requests.put(None)
            for _ in call:
                pass
    finally:
        requests.put(None)
        channel.close()
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "node.id" in refused.value.details() and sid("beta") in refused.value.details()

    after = _instances(ads_control)["beta1"]
    assert after["rejection"] is None and after["rejectedVersion"] is None
    assert after == {**before, "lastSeen": after["lastSeen"], "expiresAt": after["expiresAt"]}
    sidecars = json.loads(ads_control.ok("get", "sidecars", "-o", "json"))
    assert [s for s in sidecars if s["nodeId"] == "beta1"] == []


def test_ads_stream_claims_a_new_node_id_for_its_identity(ads_control, tmp_path):
    """A sidecar's stream opens before it registers: its new node.id becomes its own, and
    another identity can then not register that id."""
    alpha = Workload(ads_control, "alpha", tmp_path / "alpha")
    beta = Workload(ads_control, "beta", tmp_path / "beta")
    channel, call, requests = _ads_call(ads_control, alpha, "alphaside1", "alpha")
    try:
        first = next(call)
        assert first.type_url.endswith("Cluster")
    finally:
        requests.put(None)
        channel.close()
    squat = beta.register("alphaside1")
    assert squat.status_code == 403
    assert _error(squat)["path"] == "instanceId" and sid("alpha") in _error(squat)["message"]
    assert "alphaside1" not in _instances(ads_control)
    assert alpha.register("alphaside1", mode="sidecar").status_code == 200


@pytest.mark.parametrize("case", ["ca-true", "key-cert-sign", "crl-sign"])
def test_ads_stream_with_a_hostile_svid_is_refused(ads_control, tmp_path, case):
    """A leaf minted with the CA key for a real workload ID but breaking an X.509-SVID leaf
    rule (a CA, or allowed to sign certificates or CRLs) cannot open ADS: PERMISSION_DENIED
    naming the rule, and no node is claimed."""
    from tests.attack import REASONS, mint_case

    hostile = mint_case(ads_control.data_dir, case, tmp_path, spiffe_id=sid("alpha"))
    channel, call, requests = _ads_call(ads_control, hostile, "alphaside9", "alpha")  # type: ignore[arg-type]
    try:
        with pytest.raises(grpc.RpcError) as refused:
            next(call)
    finally:
        requests.put(None)
        channel.close()
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert REASONS[case] in refused.value.details()
    beta = Workload(ads_control, "beta", tmp_path / "beta")
    assert beta.register("alphaside9").status_code == 200  # the id was never claimed


# --------------------------------------------------------------------- ownership for life


def test_a_lapsed_instance_id_stays_its_owners(strict_control, tmp_path):
    """After alpha's lease lapses, beta cannot take its id; alpha's heartbeat works again."""
    alpha = Workload(strict_control, "alpha", tmp_path / "alpha")
    beta = Workload(strict_control, "beta", tmp_path / "beta")
    assert alpha.register("inst1").status_code == 200
    wait_for(lambda: "inst1" not in _instances(strict_control), 15, "the lease to lapse")

    squat = beta.register("inst1", address="127.0.0.1", port=6666)
    assert squat.status_code == 403, squat.text
    assert _error(squat)["path"] == "instanceId"
    assert sid("alpha") in _error(squat)["message"]
    assert "inst1" not in _instances(strict_control)

    back = alpha.register("inst1")
    assert back.status_code == 200, back.text
    record = _instances(strict_control)["inst1"]
    assert record["spiffeId"] == sid("alpha") and record["port"] == 9000


# --------------------------------------------------------------------- quotas


@pytest.mark.parametrize(
    ("labels", "path", "limit"),
    [
        ({f"k{i}": "v" for i in range(33)}, "labels", "--max-labels"),
        ({"k" * 129: "v"}, "labels", "--max-label-key-bytes"),
        ({"version": "v" * 257}, "labels.version", "--max-label-value-bytes"),
        ({f"k{i}": "v" * 250 for i in range(20)}, "labels", "--max-labels-bytes"),
    ],
)
def test_label_quotas_refuse_with_the_limit(strict_control, tmp_path, labels, path, limit):
    """Oversized labels are 400 naming the field and the flag; the snapshot others get and
    the registry do not change."""
    alpha = Workload(strict_control, "alpha", tmp_path / "alpha")
    gamma = Workload(strict_control, "gamma", tmp_path / "gamma")
    with gamma.http() as http:
        before = http.get("/v1/snapshot").json()["version"]
    response = alpha.register("big1", labels=labels)
    assert response.status_code == 400, response.text
    assert _error(response)["path"] == path and limit in _error(response)["message"]
    assert "big1" not in _instances(strict_control)
    with gamma.http() as http:
        assert http.get("/v1/snapshot").json()["version"] == before


def test_instances_per_identity_quota(strict_control, tmp_path):
    """A third live instance of one identity is 429 naming the limit; heartbeats of the
    first two and other identities' registrations still work."""
    alpha = Workload(strict_control, "alpha", tmp_path / "alpha")
    beta = Workload(strict_control, "beta", tmp_path / "beta")
    assert alpha.register("a1").status_code == 200
    assert alpha.register("a2").status_code == 200
    third = alpha.register("a3")
    assert third.status_code == 429, third.text
    assert "--max-instances-per-identity 2" in _error(third)["message"]
    assert alpha.register("a1").status_code == 200  # a heartbeat is not a new instance
    assert beta.register("b1").status_code == 200
    assert "a3" not in _instances(strict_control)


def test_watch_keys_per_identity_quota(strict_control, tmp_path):
    """A third distinct `deps` set of one identity is 429 (deps); the ones it has keep
    answering, and too many names in one `deps` is 400."""
    alpha = Workload(strict_control, "alpha", tmp_path / "alpha")
    with alpha.http() as http:
        assert http.get("/v1/snapshot", params={"deps": "a"}).status_code == 200
        assert http.get("/v1/snapshot", params={"deps": "a,b"}).status_code == 200
        third = http.get("/v1/snapshot", params={"deps": "c"})
        assert third.status_code == 429, third.text
        assert _error(third)["path"] == "deps"
        assert "--max-watch-keys-per-identity 2" in _error(third)["message"]
        assert http.get("/v1/snapshot", params={"deps": "b,a"}).status_code == 200
        many = http.get("/v1/snapshot", params={"deps": "a,b,c,d,e"})
        assert many.status_code == 400 and "--max-deps" in _error(many)["message"]


# --------------------------------------------------------------------- the observer


class _HostileAdmin:
    """An admin port serving malformed pages; counts what it sent."""

    def __init__(self, host: str, metrics_bytes: int) -> None:
        self.sent = 0
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.hits += 1
                if self.path == "/metrics":
                    self.send_response(200)
                    self.send_header("content-type", "text/plain")
                    self.end_headers()
                    line = b'mesh_filler{a="b"} 1\n' * 3000
                    try:
                        while outer.sent < metrics_bytes:
                            self.wfile.write(line)
                            outer.sent += len(line)
                    except OSError:
                        pass
                    return
                if self.path == "/debug/snapshot":
                    body = b'{"snapshot": []}'
                else:
                    body = b"[" * 50_000 + b"]" * 50_000
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_malformed_admin_pages_are_check_lines_not_500s(strict_control, tmp_path):
    """`{"snapshot": []}`, 50,000-deep JSON and a 64 MB /metrics give WARN lines in
    `meshctl check` and an error in `explain`, never a 500; /metrics is not read past the
    cap."""
    admin = _HostileAdmin("127.0.0.1", 64 * 1024 * 1024)
    alpha = Workload(strict_control, "alpha", tmp_path / "alpha")
    try:
        stop = threading.Event()

        def heartbeat() -> None:
            for _ in range(300):  # bounded: at most ~60 s of 0.2 s beats
                if stop.is_set():
                    return
                alpha.register("obs1", adminPort=admin.port)
                stop.wait(0.2)

        beats = threading.Thread(target=heartbeat, daemon=True)
        beats.start()
        try:
            wait_for(lambda: "obs1" in _instances(strict_control), 15, "the instance")
            check = strict_control.meshctl("check", "-o", "json")
            assert check.returncode in (0, 1), check.stderr
            checks = json.loads(check.stdout)
            pages = [c for c in checks if c["name"] == "admin pages default/alpha/obs1"]
            assert pages and {c["status"] for c in pages} == {"warn"}
            lines = [c["message"] for c in pages]
            assert any("nested deeper" in m for m in lines), lines
            assert any("snapshot is not a JSON object" in m for m in lines), lines

            explained = strict_control.meshctl("explain", "alpha", "-o", "json")
            assert explained.returncode == 0, explained.stderr
            [item] = json.loads(explained.stdout)["instances"]
            assert "snapshot is not a JSON object" in item["error"]

            def metrics_refused() -> bool:
                out = json.loads(strict_control.ok("check", "-o", "json"))
                scraping = next(c for c in out if c["name"] == "metrics scraping")
                return "cap" in scraping["message"]

            wait_for(metrics_refused, 30, "the /metrics cap to show in check", interval=0.5)
        finally:
            stop.set()
            beats.join(10)
        assert admin.sent < 16 * 1024 * 1024, admin.sent  # a cap of 256 KiB, not 64 MB
    finally:
        admin.close()


def _non_loopback_ip() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        address = str(probe.getsockname()[0])
    assert not address.startswith("127."), "this test needs a non-loopback interface"
    return address


def test_observer_gets_only_the_instances_own_address(strict_control, tmp_path):
    """An instance registered from 127.0.0.1 that names another address is never scraped
    there; `meshctl check` says why."""
    elsewhere = _non_loopback_ip()
    admin = _HostileAdmin("0.0.0.0", 1024)
    alpha = Workload(strict_control, "alpha", tmp_path / "alpha")
    try:
        assert alpha.register("far1", address=elsewhere, adminPort=admin.port).status_code == 200
        check = json.loads(strict_control.ok("check", "-o", "json"))
        lines = [c["message"] for c in check if c["name"].startswith("admin pages ")]
        assert any("not the address instance far1 registered from" in m for m in lines), lines
        assert admin.hits == 0
    finally:
        admin.close()


# --------------------------------------------------------------------- request bodies


def _raw_tls(control: Control) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", control.port), timeout=10)
    return _server_context(control).wrap_socket(sock, server_hostname="127.0.0.1")


def _read_status(conn: ssl.SSLSocket) -> int:
    data = b""
    for _ in range(100):  # bounded: a status line arrives in one or two records
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if b"\r\n" in data:
            break
    return int(data.split(b" ", 2)[1])


def test_a_declared_50mb_body_is_refused_before_it_is_sent(control):
    """Content-Length over the cap is 413 at once: the server does not wait for the body."""
    with _raw_tls(control) as conn:
        conn.sendall(
            b"POST /v1/sign HTTP/1.1\r\nhost: control\r\ncontent-type: application/json\r\n"
            b"content-length: 52428800\r\n\r\n{"
        )
        assert _read_status(conn) == 413  # the old server read 50 MB first (recv timed out)


def _answer_now(conn: ssl.SSLSocket) -> bytes | None:
    """Whatever application data has arrived, without waiting (session tickets skipped)."""
    conn.setblocking(False)
    try:
        return conn.recv(4096)
    except (ssl.SSLWantReadError, BlockingIOError):
        return None
    finally:
        conn.settimeout(10)


def test_a_chunked_body_stops_being_read_at_the_cap(control):
    """A chunked upload past the cap gets 413 long before 50 MB were sent."""
    sent = 0
    answer: bytes | None = None
    with _raw_tls(control) as conn:
        conn.sendall(
            b"POST /v1/sign HTTP/1.1\r\nhost: control\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
        for _ in range(800):  # at most 50 MB
            try:
                conn.sendall(chunk)
            except OSError:
                answer = _answer_now(conn)
                break
            sent += 65536
            answer = _answer_now(conn)
            if answer:
                break
    assert answer is not None and answer.startswith(b"HTTP/1.1 413"), answer
    assert sent < 16 * 1024 * 1024, sent


def test_deep_and_explosive_bodies_are_400_not_500(control):
    """10,000-deep JSON on /v1/sign (unauthenticated) and on apply, and a billion-laughs
    YAML on apply, are refused 400 naming the body; nothing is stored."""
    deep = b'{"csr":' * 10_000 + b"1" + b"}" * 10_000
    sign = httpx.post(
        f"{control.url}/v1/sign",
        content=deep,
        headers={"content-type": "application/json"},
        verify=_server_context(control),
        timeout=10,
    )
    assert sign.status_code == 400, sign.text
    assert _error(sign)["path"] == "body" and "nested deeper" in _error(sign)["message"]

    applied = control.meshctl("apply", "-f", "-", stdin="[" * 10_000 + "]" * 10_000)
    assert applied.returncode == 1 and "documents[0]" in applied.stderr

    laughs = ["apiVersion: meshlib.io/v1", "kind: TrafficPolicy", "metadata: {name: lol}"]
    laughs += ["x0: &x0 [a, a, a, a, a, a, a, a, a, a]"]
    laughs += [f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 10) + "]" for i in range(1, 9)]
    laughs += ["spec: {service: lol}"]
    bomb = control.meshctl("apply", "-f", "-", stdin="\n".join(laughs) + "\n")
    assert bomb.returncode == 1 and "expands to more than" in bomb.stderr
    assert json.loads(control.ok("get", "TrafficPolicy", "-o", "json")) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"service": "orders", "uses": 10**30}, "uses"),
        ({"service": "orders", "uses": -1}, "uses"),
        ({"service": "orders", "uses": 1.5}, "uses"),
        ({"service": "orders", "ttl": "99999999d"}, "ttl"),
        ({"service": "orders", "ttl": "9" * 5000 + "s"}, "ttl"),
        ({"service": "orders", "ttl": 3600}, "ttl"),
        ({"service": "orders", "ttl": "-1h"}, "ttl"),
    ],
)
def test_token_create_extremes_are_400_naming_the_field(control, body, field):
    """Huge, negative or non-integer uses and ttl are 400 naming the field; no token is made."""
    admin_dir = control.data_dir / "admin"
    ctx = _server_context(control)
    ctx.load_cert_chain(str(admin_dir / "admin.pem"), str(admin_dir / "admin.key"))
    with httpx.Client(base_url=control.url, verify=ctx, timeout=10) as http:
        response = http.post("/v1/admin/tokens", json=body)
    assert response.status_code == 400, response.text
    assert _error(response)["path"] == field and field in _error(response)["message"]
    assert json.loads(control.ok("get", "tokens", "-o", "json")) == []


def test_token_create_cli_refuses_huge_uses_and_ttl(control):
    """`meshctl token create` with extreme --uses/--ttl exits non-zero naming the field."""
    uses = control.meshctl("token", "create", "--service", "orders", "--uses", "9" * 30)
    assert uses.returncode != 0 and "uses" in uses.stderr
    ttl = control.meshctl("token", "create", "--service", "orders", "--ttl", "99999999d")
    assert ttl.returncode != 0 and "ttl" in ttl.stderr
    assert json.loads(control.ok("get", "tokens", "-o", "json")) == []


def _duplicate_san_csr(service: str) -> str:
    """A CSR carrying the SAN extension twice (DER patched, then signed again)."""
    key = ec.generate_private_key(ec.SECP256R1())
    uri = x509.UniformResourceIdentifier(sid(service))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([uri]), critical=True)
        .add_extension(x509.IssuerAlternativeName([uri]), critical=False)
        .sign(key, hashes.SHA256())
    )
    der = csr.public_bytes(serialization.Encoding.DER)

    def span(i: int) -> tuple[int, int]:  # (body start, end) of the DER element at i
        length, j = der[i + 1], i + 2
        if length & 0x80:
            n = length & 0x7F
            length, j = int.from_bytes(der[j : j + n], "big"), j + n
        return j, j + length

    outer, _ = span(0)
    _, info_end = span(outer)
    _, alg_end = span(info_end)
    info = der[outer:info_end].replace(b"\x06\x03\x55\x1d\x12", b"\x06\x03\x55\x1d\x11")
    signature = b"\x00" + key.sign(info, ec.ECDSA(hashes.SHA256()))

    def tlv(tag: int, body: bytes) -> bytes:
        size = len(body)
        if size < 0x80:
            return bytes([tag, size]) + body
        raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
        return bytes([tag, 0x80 | len(raw)]) + raw + body

    patched = tlv(0x30, info + der[info_end:alg_end] + tlv(0x03, signature))
    loaded = x509.load_der_x509_csr(patched)
    assert loaded.is_signature_valid
    return loaded.public_bytes(serialization.Encoding.PEM).decode()


def test_csr_with_a_duplicate_extension_is_400_and_keeps_the_token(control):
    """A CSR with the SAN extension twice is 400 (csr) with the reason; the token is unspent."""
    token = control.token("orders", "--uses", "1")
    ctx = _server_context(control)
    response = httpx.post(
        f"{control.url}/v1/sign",
        json={"csr": _duplicate_san_csr("orders"), "token": token},
        verify=ctx,
        timeout=10,
    )
    assert response.status_code == 400, response.text
    assert _error(response)["path"] == "csr" and "more than once" in _error(response)["message"]
    key = ec.generate_private_key(ec.SECP256R1())
    good = httpx.post(
        f"{control.url}/v1/sign",
        json={"csr": _csr(key, "orders"), "token": token},
        verify=ctx,
        timeout=10,
    )
    assert good.status_code == 200, good.text
