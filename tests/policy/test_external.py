"""The ExternalService kind: decoding, defaults, canonical form and bad input."""

from __future__ import annotations

from typing import Any

import pytest

from meshlib.errors import PolicyError
from meshlib.identity.keys import generate_private_key
from meshlib.policy.decode import decode_resource, encode_resource
from meshlib.policy.externalmodel import ExternalServiceSpec


def _doc(spec: Any, name: str = "legacy-billing") -> dict[str, Any]:
    return {
        "apiVersion": "meshlib.io/v1",
        "kind": "ExternalService",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec,
    }


def _ca_pem() -> str:
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = generate_private_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "legacy CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_defaults_select_the_consul_service_of_the_same_name_in_plaintext():
    """An empty spec selects the Consul service named like the resource, any tag, no TLS."""
    res = decode_resource(_doc({}))
    assert res.spec == ExternalServiceSpec(consul_service="legacy-billing")
    assert decode_resource(encode_resource(res)) == res


def test_tls_with_ca_and_sni_round_trips():
    """tls: tls with a CA bundle and an SNI name decodes and re-encodes unchanged."""
    ca = _ca_pem()
    spec = {"consul": {"service": "billing_v2", "tags": ["v1", "eu"]}, "tls": "tls",
            "caCertificate": ca, "sni": "Billing.Internal"}  # fmt: skip
    res = decode_resource(_doc(spec))
    assert res.spec == ExternalServiceSpec(
        "billing_v2", ("eu", "v1"), "tls", ca, "billing.internal"
    )
    assert decode_resource(encode_resource(res)) == res


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"tls": "mtls"}, "spec.tls: must be one of none, tls, got 'mtls'"),
        ({"sni": "a.b"}, "spec.sni: only with tls: tls"),
        ({"caCertificate": "x"}, "spec.caCertificate: only with tls: tls"),
        ({"tls": "tls", "caCertificate": "not pem"}, "spec.caCertificate: must be PEM"),
        ({"tls": "tls", "sni": "bad_name"}, "spec.sni: must be a DNS host name"),
        ({"consul": {"service": "a/b"}}, "spec.consul.service: must be a Consul service name"),
        ({"consul": {"tags": "v1"}}, "spec.consul.tags: must be a list"),
        ({"consul": {"tags": ["ok", ""]}}, "spec.consul.tags[1]:"),
        ({"consul": {"tags": [f"t{i}" for i in range(17)]}}, "spec.consul.tags: at most 16"),
        ({"consul": {"name": "x"}}, "spec.consul.name: unknown field"),
        ({"endpoints": []}, "spec.endpoints: unknown field"),
    ],
)
def test_bad_input_names_the_field(spec: Any, error: str):
    """Every bad field is refused with its path and the reason."""
    with pytest.raises(PolicyError) as info:
        decode_resource(_doc(spec))
    assert str(info.value).startswith(error), str(info.value)
