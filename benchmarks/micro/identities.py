"""SVIDs from a real mesh CA and the TLS files and contexts built from them."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks.micro.settings import TRUST_DOMAIN


@dataclass(frozen=True, slots=True)
class Identities:
    """SVIDs issued by a real mesh CA, and the TLS contexts meshlib builds from them."""

    client: Any  # SVID
    server: Any  # SVID
    client_context: ssl.SSLContext
    files: dict[str, Path]


def make_identities(workdir: Path) -> Identities:
    """A mesh CA in *workdir*, SVIDs for ``frontend`` and ``backend``, PEM files for uvicorn."""
    from meshlib.identity.keys import (
        build_csr,
        generate_private_key,
        private_key_pem,
        write_private_file,
    )
    from meshlib.identity.spiffe import SpiffeId
    from meshlib.identity.svid import SVID
    from meshlib.identity.tls import build_client_context
    from meshlib_control.ca.authority import CertificateAuthority

    ca = CertificateAuthority.load_or_create(workdir / "ca", TRUST_DOMAIN)
    svids = {}
    for service in ("frontend", "backend"):
        key = generate_private_key()
        spiffe_id = SpiffeId.for_service(TRUST_DOMAIN, "default", service)
        issued = ca.sign_csr(build_csr(key, spiffe_id), entitled=spiffe_id, ttl=timedelta(hours=2))
        svids[service] = SVID.from_pem(issued.cert_pem, private_key_pem(key), ca.bundle_pem)
    tls_dir = workdir / "tls"
    tls_dir.mkdir(mode=0o700)
    server = svids["backend"]
    files = {"cert": tls_dir / "server.pem", "key": tls_dir / "server.key"}
    files["bundle"] = tls_dir / "bundle.pem"
    write_private_file(files["cert"], server.cert_chain_pem)
    write_private_file(files["key"], server.key_pem)
    write_private_file(files["bundle"], server.bundle_pem)
    client = svids["frontend"]
    return Identities(
        client, server, build_client_context(client, client.bundle_pem, tls_dir), files
    )
