"""Workload keys and CSRs, and private files that are never readable by others.

The private key is generated here, inside the workload, and only a CSR leaves it
(DESIGN.md, invariant 1). On disk the key lives in 0600 files written by
:func:`write_private_file`, which never lets the file exist with wider permissions.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshlib.identity.spiffe import SpiffeId

__all__ = [
    "build_csr",
    "generate_private_key",
    "private_key_pem",
    "write_private_file",
    "write_public_file",
]

PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """A new ECDSA P-256 private key (the only key type the mesh CA signs)."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """*key* as unencrypted PKCS#8 PEM (protect it with file permissions, not a password)."""
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def build_csr(key: ec.EllipticCurvePrivateKey, spiffe_id: SpiffeId) -> bytes:
    """A PEM PKCS#10 request for *spiffe_id*, signed with *key*.

    The subject is empty; the SAN extension (critical, as SPIFFE requires with an empty
    subject) holds exactly one URI, the ID, plus the DNS name of a workload ID.
    """
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
    if spiffe_id.dns_name is not None:
        names.append(x509.DNSName(spiffe_id.dns_name))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: a fresh inode created with *mode* from the start (the umask can only narrow
    # it), so no instant exists where the bytes sit in a wider-permission file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        try:
            os.fchmod(fd, mode)  # exact mode whatever the umask
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_private_file(path: Path, data: bytes) -> None:
    """Atomically replace *path* with *data*, mode 0600 at every instant.

    A temporary file is created next to *path* with ``os.open(..., 0o600)``, written,
    fsynced and renamed over *path* with ``os.replace``; readers see the old or the new
    content, never a mix. The parent directory must exist.
    """
    _write_atomic(path, data, PRIVATE_FILE_MODE)


def write_public_file(path: Path, data: bytes) -> None:
    """Atomically replace *path* with *data*, mode 0644 (certificates, bundles)."""
    _write_atomic(path, data, PUBLIC_FILE_MODE)
