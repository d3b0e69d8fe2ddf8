"""Bad input is refused with a message naming the field and the reason; nothing changes."""

from __future__ import annotations

import json
import ssl
import time

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

import meshlib
from meshlib.errors import ControlPlaneError

pytestmark = pytest.mark.integration

VALID = """
apiVersion: meshlib.io/v1
kind: PeerAuthentication
metadata: {name: ok, namespace: default}
spec: {mode: PERMISSIVE}
"""

INVALID = """
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {name: orders, namespace: default}
spec:
  service: orders
  routes:
  - retries: {perTryTimeout: -1s}
"""


def _join(control, tmp_path, token):
    return meshlib.Mesh(
        service="orders",
        control_url=control.url,
        token=token,
        data_dir=tmp_path / f"w-{time.monotonic_ns()}",
        start_timeout=10,
    )


def test_invalid_resource_batch_is_refused_whole(control):
    """One bad document refuses the whole batch with its field path; nothing is stored."""
    result = control.meshctl("apply", "-f", "-", stdin=VALID + "---" + INVALID)
    assert result.returncode == 1
    assert "documents[1].spec.routes[0].retries.perTryTimeout" in result.stderr
    assert json.loads(control.ok("get", "PeerAuthentication", "-o", "json")) == []
    assert json.loads(control.ok("get", "TrafficPolicy", "-o", "json")) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kind: Nope\napiVersion: meshlib.io/v1\nmetadata: {name: a}\nspec: {}", "kind"),
        ("apiVersion: v0\nkind: RateLimit\nmetadata: {name: a}\nspec: {}", "apiVersion"),
        ("a: [unclosed", "documents[0]"),
        (VALID.replace("PERMISSIVE", "LOOSE"), "spec.mode"),
        (VALID.replace("mode:", "mood:"), "spec"),
    ],
)
def test_invalid_resources_name_the_field(control, text, expected):
    """Unknown kinds, versions, modes and fields, and broken YAML, name what is wrong."""
    result = control.meshctl("apply", "-f", "-", stdin=text)
    assert result.returncode == 1
    assert expected in result.stderr


def test_unknown_kind_on_get_and_missing_delete(control):
    """get/delete of unknown kinds or names fail with a clear message."""
    result = control.meshctl("get", "Gateway")
    assert result.returncode == 1 and "unknown kind 'Gateway'" in result.stderr
    result = control.meshctl("delete", "RateLimit", "ghost")
    assert result.returncode == 1 and "not found" in result.stderr


def test_forged_token_is_refused(control, tmp_path):
    """A token whose secret does not match its record is refused as forged."""
    real = control.token("orders")
    prefix, token_id, secret, fingerprint = real.split(".")
    forged = ".".join([prefix, token_id, secret[::-1], fingerprint])
    with pytest.raises(ControlPlaneError, match="forged"):
        _join(control, tmp_path, forged).start()
    # The real token was not spent by the forgery.
    _join(control, tmp_path, real).start().close()


def test_expired_token_is_refused(control, tmp_path):
    """A token past its expiry is refused, saying so."""
    token = control.token("orders", "--ttl", "1s")
    time.sleep(1.5)
    with pytest.raises(ControlPlaneError, match="expired"):
        _join(control, tmp_path, token).start()


def test_used_up_token_is_refused(control, tmp_path):
    """A single-use token works once and is then refused as used up."""
    token = control.token("orders", "--uses", "1")
    _join(control, tmp_path, token).start().close()
    with pytest.raises(ControlPlaneError, match="no uses left"):
        _join(control, tmp_path, token).start()


def test_token_pinning_a_different_ca_is_refused(control, tmp_path):
    """A token pinning another CA makes the workload refuse to trust the control service."""
    real = control.token("orders")
    prefix, token_id, secret, _ = real.split(".")
    with pytest.raises(ControlPlaneError, match="pinned"):
        _join(control, tmp_path, ".".join([prefix, token_id, secret, "0" * 64])).start()


def _csr(uris: list[str]) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _sign(control, body):
    ctx = ssl.create_default_context(cafile=str(control.data_dir / "ca.pem"))
    ctx.check_hostname = False
    return httpx.post(f"{control.url}/v1/sign", json=body, verify=ctx, timeout=10)


def test_csr_with_two_uri_sans_is_refused_and_token_kept(control):
    """A CSR with two URI SANs is refused (400, field csr) and does not spend the token."""
    token = control.token("orders", "--uses", "1")
    orders = "spiffe://mesh.local/ns/default/sa/orders"
    response = _sign(control, {"csr": _csr([orders, orders + "2"]), "token": token})
    assert response.status_code == 400
    assert response.json()["error"]["path"] == "csr"
    assert "URI" in response.json()["error"]["message"]
    good = _sign(control, {"csr": _csr([orders]), "token": token})
    assert good.status_code == 200, good.text


def test_csr_for_another_identity_is_refused(control):
    """A token for orders cannot obtain an SVID for inventory."""
    token = control.token("orders")
    csr = _csr(["spiffe://mesh.local/ns/default/sa/inventory"])
    response = _sign(control, {"csr": csr, "token": token})
    assert response.status_code == 400
    assert "entitled" in response.json()["error"]["message"]
    issued = json.loads(control.ok("get", "certificates", "-o", "json"))
    assert not [c for c in issued if c["spiffeId"].endswith("/inventory")]


def test_sign_without_token_or_svid_is_refused(control):
    """Signing needs a token or a current SVID."""
    response = _sign(control, {"csr": _csr(["spiffe://mesh.local/ns/default/sa/orders"])})
    assert response.status_code == 401
    assert response.json()["error"]["path"] == "token"


def test_admin_api_refuses_workload_identities(control, workload):
    """A workload SVID cannot use the admin API."""
    mesh = workload("orders")
    from meshlib.integrations.httpx import IdentityTransport

    transport = IdentityTransport(
        expected="spiffe://mesh.local/control", tls=mesh.tls.client_context
    )
    with httpx.Client(transport=transport) as http:
        response = http.post(f"{control.url}/v1/admin/resources", content=VALID)
    assert response.status_code == 403
    assert "admin SVID" in response.json()["error"]["message"]
    assert json.loads(control.ok("get", "PeerAuthentication", "-o", "json")) == []


def test_get_yaml_output_applies_again_unchanged(control):
    """`meshctl get -o yaml` output is valid input for `meshctl apply` and changes nothing."""
    control.apply(VALID)
    exported = control.ok("get", "PeerAuthentication", "-o", "yaml")
    assert "revision: 1" in exported
    assert control.apply(exported).strip() == "peerauthentication/default/ok unchanged"
