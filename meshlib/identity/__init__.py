"""Workload identity: SPIFFE IDs, keys and CSRs, X.509-SVIDs and peer identities."""

from __future__ import annotations

from meshlib.identity.keys import (
    build_csr,
    generate_private_key,
    private_key_pem,
    write_private_file,
    write_public_file,
)
from meshlib.identity.spiffe import SpiffeId, trust_domain_id
from meshlib.identity.svid import (
    SVID,
    PeerSVIDValidator,
    certificate_fingerprint,
    check_svid_leaf,
    load_pem_certificates,
    spiffe_id_from_certificate,
    spiffe_id_from_peercert,
)

__all__ = [
    "SVID",
    "PeerSVIDValidator",
    "SpiffeId",
    "build_csr",
    "certificate_fingerprint",
    "check_svid_leaf",
    "generate_private_key",
    "load_pem_certificates",
    "private_key_pem",
    "spiffe_id_from_certificate",
    "spiffe_id_from_peercert",
    "trust_domain_id",
    "write_private_file",
    "write_public_file",
]
