"""The trust bundle's operations: kept in the store, added to and retired from by an operator.

The bundle is public (roots only) and lives in the store under
:data:`~meshlib_control.ca.bundle.BUNDLE_META_KEY`, so every control replica serves the
same one; each replica re-reads it whenever it rebuilds snapshots. Signing material
never goes there: each replica signs with its own intermediate, from its own files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from cryptography import x509

from meshlib.errors import ConfigError
from meshlib.identity.keys import write_private_file
from meshlib.identity.svid import certificate_fingerprint
from meshlib_control.ca.bundle import BUNDLE_META_KEY, BundleError, TrustBundle
from meshlib_control.errors import ApiError
from meshlib_control.plane.base import PlaneBase, utc_now
from meshlib_control.snapshot.builder import MeshState

__all__ = ["TrustOperations", "certificate_info"]

log = logging.getLogger("meshlib_control")


def certificate_info(cert: x509.Certificate) -> dict[str, Any]:
    """What ``meshctl ca status`` shows of one CA certificate."""
    return {
        "subject": cert.subject.rfc4514_string(),
        "fingerprint": certificate_fingerprint(cert),
        "notBefore": cert.not_valid_before_utc.isoformat(),
        "notAfter": cert.not_valid_after_utc.isoformat(),
    }


class TrustOperations(PlaneBase):
    """Keep the trust bundle in the store; add and retire roots."""

    _bundle_listeners: list[Callable[[bytes], None]]

    def on_bundle_change(self, listener: Callable[[bytes], None]) -> None:
        """Call *listener* with the new bundle's PEM each time this replica adopts one
        (the server re-trusts its callers with it: a retired root's clients are refused)."""
        if not hasattr(self, "_bundle_listeners"):
            self._bundle_listeners = []
        self._bundle_listeners.append(listener)

    def _adopt(self, bundle: TrustBundle) -> None:
        """Make *bundle* this replica's; ConfigError when it lacks the signing root."""
        self.ca.use_bundle(bundle)
        # meshctl verifies this replica with the bundle beside the admin credentials.
        admin_bundle = self.settings.data_dir / "admin" / "bundle.pem"
        if admin_bundle.parent.exists():
            write_private_file(admin_bundle, bundle.pem)
        for listener in getattr(self, "_bundle_listeners", ()):
            try:
                listener(bundle.pem)
            except Exception:  # one failing listener must not keep the bundle from others
                log.exception("trust bundle listener failed")

    def init_trust_bundle(self) -> None:
        """At start: adopt the stored bundle, or store the CA's own on first start.

        Raises:
            ConfigError: the stored bundle does not hold the root this replica signs
                from (add it first with ``meshctl ca add-root``), or does not parse.
        """
        stored = self.store.get_meta(BUNDLE_META_KEY)
        if stored is None:
            self.store.set_meta(BUNDLE_META_KEY, self.ca.bundle_pem.decode())
            return
        self._adopt(TrustBundle.from_pem(stored, field="stored trust bundle"))

    def sync_trust_bundle(self) -> None:
        """Adopt the stored bundle if another replica (or an operator) changed it."""
        stored = self.store.get_meta(BUNDLE_META_KEY)
        if stored is None or stored.encode() == self.ca.bundle_pem:
            return
        try:
            self._adopt(TrustBundle.from_pem(stored, field="stored trust bundle"))
        except ConfigError as exc:
            # Serving the last good bundle beats serving one this replica cannot sign for.
            log.error("not adopting the stored trust bundle: %s", exc)

    def state(self) -> MeshState:
        """The mesh state, with the trust bundle re-read from the store first."""
        self.sync_trust_bundle()
        return super().state()

    def _store_bundle(self, bundle: TrustBundle) -> None:
        """Store *bundle*, then serve it (a store refusing writes changes nothing here)."""
        if self.ca.root not in bundle.roots:  # add/retire never drop it; kept as a guard
            raise ApiError(409, "conflict", "the bundle must keep this replica's signing root")
        self.store.set_meta(BUNDLE_META_KEY, bundle.pem.decode())
        self._adopt(bundle)
        self.refresh()

    def add_root(self, body: dict[str, Any]) -> dict[str, Any]:
        """Add one root (``cert``: PEM) to the bundle; every snapshot then carries it."""
        text = body.get("cert")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "invalid", "cert: required, one PEM root certificate", path="cert")
        try:
            certs = x509.load_pem_x509_certificates(text.encode())
        except ValueError as exc:
            raise ApiError(
                400, "invalid", f"cert: not a PEM certificate: {exc}", path="cert"
            ) from None
        if len(certs) != 1:
            raise ApiError(
                400, "invalid", f"cert: exactly one certificate, got {len(certs)}", path="cert"
            )
        self.sync_trust_bundle()
        try:
            bundle = self.ca.bundle.with_root(
                certs[0], trust_domain=self.trust_domain, now=utc_now()
            )
        except BundleError as exc:
            raise ApiError(400, "invalid", str(exc), path=exc.field) from exc
        self._store_bundle(bundle)
        log.warning("trust bundle: added root %s", certificate_fingerprint(certs[0]))
        return self.ca_status()

    def retire_root(self, body: dict[str, Any]) -> dict[str, Any]:
        """Remove the root ``fingerprint`` from the bundle; peers it signed are refused."""
        fingerprint = body.get("fingerprint")
        if not isinstance(fingerprint, str) or not fingerprint.strip():
            raise ApiError(
                400, "invalid", "fingerprint: required, sha256:<hex> of a root", path="fingerprint"
            )
        self.sync_trust_bundle()
        try:
            bundle = self.ca.bundle.without(fingerprint, signing_root=self.ca.root)
        except BundleError as exc:
            status, code = (409, "conflict") if exc.conflict else (404, "not-found")
            raise ApiError(status, code, str(exc), path=exc.field) from exc
        self._store_bundle(bundle)
        log.warning("trust bundle: retired root %s", fingerprint)
        return self.ca_status()

    def ca_status(self) -> dict[str, Any]:
        """The bundle's roots, the root this replica signs from, and its signing chain."""
        self.sync_trust_bundle()
        ca = self.ca
        signing_root = certificate_fingerprint(ca.root)
        return {
            "trustDomain": self.trust_domain,
            "roots": [
                {**certificate_info(r), "signing": certificate_fingerprint(r) == signing_root}
                for r in ca.bundle.roots
            ],
            "signingRoot": signing_root,
            "signingCertificate": certificate_info(ca.signing_certificate),
            "intermediates": [certificate_info(c) for c in ca.chain],
        }
