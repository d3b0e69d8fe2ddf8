"""The offline half of the CA: a root kept in a file, and the per-replica intermediates.

``meshctl ca init`` writes a root and its key into a directory that never needs to be on
a control machine; ``meshctl ca intermediate`` issues from it one intermediate per control
replica. Each replica starts with its own intermediate (``control serve --ca-cert
ca.pem --ca-key ca.key``): it signs SVIDs with it and serves the chain (leaf, then the
intermediate) to every workload. No root key, and no replica's key, is ever in the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from meshlib.errors import ConfigError
from meshlib.identity.keys import (
    generate_private_key,
    private_key_pem,
    write_private_file,
    write_public_file,
)
from meshlib_control.ca.bundle import describe
from meshlib_control.ca.roots import (
    CA_KEY_USAGE,
    CLOCK_SKEW,
    ROOT_VALIDITY,
    load_material,
    make_root,
    random_serial,
    trust_domain_uri,
)

__all__ = [
    "DEFAULT_INTERMEDIATE_VALIDITY",
    "INTERMEDIATE_CERT_FILE",
    "INTERMEDIATE_KEY_FILE",
    "ROOT_CERT_FILE",
    "ROOT_KEY_FILE",
    "Written",
    "init_root",
    "issue_intermediate",
]

ROOT_CERT_FILE = "root.pem"
ROOT_KEY_FILE = "root.key"
INTERMEDIATE_CERT_FILE = "ca.pem"
INTERMEDIATE_KEY_FILE = "ca.key"
DEFAULT_INTERMEDIATE_VALIDITY = timedelta(days=365)


@dataclass(frozen=True, slots=True)
class Written:
    """What a command wrote: the certificate (public) and key (0600) paths."""

    cert_path: Path
    key_path: Path
    cert: x509.Certificate


def _fresh_dir(directory: Path, names: tuple[str, str]) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in names:
        if (directory / name).exists():
            raise ConfigError(
                f"--out: {directory / name} already exists; refusing to overwrite CA "
                "material (choose another directory)"
            )


def init_root(
    out: Path,
    trust_domain: str,
    *,
    validity: timedelta = ROOT_VALIDITY,
    name: str | None = None,
) -> Written:
    """Create a root in *out* (``root.pem`` 0644, ``root.key`` 0600).

    Raises:
        ConfigError: a bad trust domain or validity, or *out* already holds a root.
    """
    trust_domain_uri(trust_domain)
    if validity <= timedelta(0):
        raise ConfigError(f"--validity: must be > 0, got {validity}")
    _fresh_dir(out, (ROOT_CERT_FILE, ROOT_KEY_FILE))
    root, key = make_root(trust_domain, validity=validity, name=name)
    write_private_file(out / ROOT_KEY_FILE, private_key_pem(key))
    write_public_file(out / ROOT_CERT_FILE, root.public_bytes(serialization.Encoding.PEM))
    return Written(out / ROOT_CERT_FILE, out / ROOT_KEY_FILE, root)


def issue_intermediate(
    root_dir: Path,
    out: Path,
    trust_domain: str,
    *,
    name: str,
    validity: timedelta = DEFAULT_INTERMEDIATE_VALIDITY,
) -> Written:
    """Issue an intermediate for one control replica from the root in *root_dir*.

    Writes ``ca.pem`` (the intermediate, then the root: the chain ``control serve
    --ca-cert`` expects) and ``ca.key`` (0600) into *out*. The intermediate may sign
    leaves only (pathLen 0) and never outlives its root.

    Raises:
        ConfigError: the root files are missing or invalid, *name* is empty, the
            validity is not > 0, or *out* already holds an intermediate.
    """
    if not name or not name.strip() or len(name) > 64:
        raise ConfigError("--name: 1-64 characters naming the replica")
    if validity <= timedelta(0):
        raise ConfigError(f"--validity: must be > 0, got {validity}")
    cert_path, key_path = root_dir / ROOT_CERT_FILE, root_dir / ROOT_KEY_FILE
    if not cert_path.exists() or not key_path.exists():
        raise ConfigError(
            f"--root: {root_dir} must hold {ROOT_CERT_FILE} and {ROOT_KEY_FILE} "
            "(create them with `meshctl ca init`)"
        )
    material = load_material(cert_path, key_path, trust_domain)
    root, root_key = material["signing_cert"], material["signing_key"]
    if root.issuer != root.subject:
        raise ConfigError(f"--root: {describe(root)} is not a self-signed root")
    _fresh_dir(out, (INTERMEDIATE_CERT_FILE, INTERMEDIATE_KEY_FILE))
    key = generate_private_key()
    now = datetime.now(UTC).replace(microsecond=0)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"meshlib intermediate {name}")])
    try:
        ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + validity, root.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(trust_domain_uri(trust_domain))]
            ),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    write_private_file(out / INTERMEDIATE_KEY_FILE, private_key_pem(key))
    write_public_file(out / INTERMEDIATE_CERT_FILE, cert.public_bytes(pem) + root.public_bytes(pem))
    return Written(out / INTERMEDIATE_CERT_FILE, out / INTERMEDIATE_KEY_FILE, cert)
