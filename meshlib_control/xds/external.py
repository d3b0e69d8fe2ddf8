"""Envoy clusters of an ExternalService (docs/consul.md): no mesh identity upstream.

The cluster is the same EDS cluster as a mesh service's (its endpoints are the ones the
control service imported from Consul, sent in the ClusterLoadAssignment), but its
transport socket is none for ``tls: none`` and, for ``tls: tls``, an UpstreamTlsContext
that presents no certificate and verifies the server against ``caCertificate`` (inline)
or the system store file, with the DNS SAN ``sni`` when one is given.
"""

from __future__ import annotations

from meshlib.policy.externalmodel import ExternalServiceSpec
from meshlib_control.xds.common import UPSTREAM_TLS, Json, Notes

__all__ = ["SYSTEM_CA_FILE", "external_transport_socket"]

SYSTEM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's bundle (ca-certificates)


def external_transport_socket(spec: ExternalServiceSpec, where: str, notes: Notes) -> Json | None:
    """The cluster's ``transport_socket``, or None for plaintext."""
    if spec.tls == "none":
        return None
    trusted = (
        {"inline_string": spec.ca_certificate}
        if spec.ca_certificate
        else {"filename": SYSTEM_CA_FILE}
    )
    validation: Json = {"trusted_ca": trusted}
    tls: Json = {"@type": UPSTREAM_TLS, "common_tls_context": {"validation_context": validation}}
    if spec.sni is not None:
        tls["sni"] = spec.sni
        validation["match_typed_subject_alt_names"] = [
            {"san_type": "DNS", "matcher": {"exact": spec.sni}}
        ]
    else:
        notes.add(
            f"{where}.external.sni",
            "partial",
            "without sni Envoy verifies the server's chain but not its name (the library "
            "checks the instance's address); give sni",
        )
    if not spec.ca_certificate:
        notes.add(
            f"{where}.external.caCertificate",
            "mapped",
            f"no caCertificate: Envoy reads the system store from {SYSTEM_CA_FILE}",
        )
    return {"name": "envoy.transport_sockets.tls", "typed_config": tls}
