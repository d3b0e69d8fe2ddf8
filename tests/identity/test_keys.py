"""Workload keys, CSRs and 0600 private files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshlib.identity.keys import (
    build_csr,
    generate_private_key,
    private_key_pem,
    write_private_file,
    write_public_file,
)
from meshlib.identity.spiffe import SpiffeId


def test_generated_key_is_p256() -> None:
    """generate_private_key returns an ECDSA P-256 key."""
    key = generate_private_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)


def test_private_key_pem_is_unencrypted_pkcs8() -> None:
    """private_key_pem gives unencrypted PKCS#8 PEM that loads back to the same key."""
    key = generate_private_key()
    pem = private_key_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert loaded.private_numbers() == key.private_numbers()


def test_csr_for_workload_has_uri_and_dns_sans() -> None:
    """A workload CSR has an empty subject, one URI SAN and the workload DNS SAN."""
    key = generate_private_key()
    sid = SpiffeId.for_service("mesh.local", "shop", "orders")
    csr = x509.load_pem_x509_csr(build_csr(key, sid))
    assert csr.is_signature_valid
    assert csr.subject == x509.Name([])
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [str(sid)]
    assert san.value.get_values_for_type(x509.DNSName) == ["orders.shop.svc.mesh.local"]
    assert len(list(san.value)) == 2
    assert csr.public_key() == key.public_key()


def test_csr_for_non_workload_has_only_uri() -> None:
    """A non-workload CSR (e.g. spiffe://td/control) carries just the URI SAN."""
    key = generate_private_key()
    csr = x509.load_pem_x509_csr(build_csr(key, SpiffeId.parse("spiffe://td/control")))
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [n.value for n in san] == ["spiffe://td/control"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_private_file_creates_0600(tmp_path: Path) -> None:
    """write_private_file writes the bytes with mode 0600, even with a permissive umask."""
    target = tmp_path / "key.pem"
    old = os.umask(0)
    try:
        write_private_file(target, b"secret")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"secret"
    assert _mode(target) == 0o600
    assert list(tmp_path.iterdir()) == [target]


def test_write_private_file_replaces_wider_file(tmp_path: Path) -> None:
    """Replacing an existing 0644 file leaves a 0600 file with only the new content."""
    target = tmp_path / "key.pem"
    target.write_bytes(b"old content that is longer")
    target.chmod(0o644)
    write_private_file(target, b"new")
    assert target.read_bytes() == b"new"
    assert _mode(target) == 0o600


def test_write_private_file_is_never_wider_than_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temporary file is already 0600, full and in the target directory when renamed."""
    seen: list[tuple[Path, int, bytes]] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        src_path = Path(src)
        seen.append((src_path, _mode(src_path), src_path.read_bytes()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    old = os.umask(0)
    try:
        write_private_file(tmp_path / "key.pem", b"data")
    finally:
        os.umask(old)
    [(src, mode, content)] = seen
    assert src.parent == tmp_path
    assert mode == 0o600
    assert content == b"data"


def test_write_private_file_leaves_no_temp_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the rename fails, the temporary file is removed and the target is untouched."""
    target = tmp_path / "key.pem"
    target.write_bytes(b"old")

    def fail(src: object, dst: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk gone"):
        write_private_file(target, b"new")
    assert list(tmp_path.iterdir()) == [target]
    assert target.read_bytes() == b"old"


def test_write_public_file_is_0644(tmp_path: Path) -> None:
    """write_public_file writes certificates world-readable (0644), whatever the umask."""
    target = tmp_path / "ca.pem"
    old = os.umask(0o077)
    try:
        write_public_file(target, b"cert")
    finally:
        os.umask(old)
    assert _mode(target) == 0o644
    assert target.read_bytes() == b"cert"
