"""ControlPlane: the control service's operations, independent of HTTP.

The API modules translate requests into these calls; every refusal is an
:class:`~meshlib_control.errors.ApiError` naming the field and the reason, raised before
anything is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import secrets
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from meshlib.errors import IdentityError
from meshlib.identity.keys import write_private_file
from meshlib.identity.spiffe import SpiffeId
from meshlib.identity.svid import SVID, load_pem_certificates
from meshlib_control.ca.authority import CertificateAuthority
from meshlib_control.consul.status import ConsulStatus
from meshlib_control.errors import ApiError
from meshlib_control.jwks import JwksCache
from meshlib_control.observe.scraper import Observer
from meshlib_control.plane.admin import AdminOperations
from meshlib_control.plane.base import utc_now
from meshlib_control.plane.trust import TrustOperations
from meshlib_control.plane.workloads import WorkloadOperations
from meshlib_control.settings import ADMIN_CERT_TTL, CONTROL_CERT_TTL, Settings
from meshlib_control.snapshot.cache import SnapshotCache
from meshlib_control.store.base import StoreUnavailable
from meshlib_control.store.open import open_store
from meshlib_control.xds.status import XdsStatus

__all__ = ["ControlPlane"]

log = logging.getLogger("meshlib_control")


class ControlPlane(WorkloadOperations, AdminOperations, TrustOperations):
    """CA, store, registry and snapshot cache of one control service."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.data_dir, 0o700)
        self.store = open_store(settings.store_spec)
        self.trust_domain = self._trust_domain(settings.trust_domain)
        if settings.ca_cert is not None and settings.ca_key is not None:
            self.ca = CertificateAuthority.from_files(
                settings.ca_cert, settings.ca_key, self.trust_domain
            )
        else:
            self.ca = CertificateAuthority.load_or_create(self.data_dir, self.trust_domain)
        self.init_trust_bundle()  # the bundle all replicas share; must hold our signing root
        self.control_id = SpiffeId(self.trust_domain, "/control")
        self.admin_id = SpiffeId(self.trust_domain, "/admin")
        # A restarted control service must not expire instances that could not heartbeat
        # while it was down: give every registration a fresh lease. Replicas on etcd do
        # not: the other replicas kept serving, and etcd's leases say who is live.
        if not self.store.replicated:
            self._renew_leases()
        self.jwks = JwksCache()  # key sets of jwksUris: fetched by the server's task
        self.imported = {}  # ExternalServices' endpoints (--consul)
        self.cache = SnapshotCache(self.state())
        # Read-only dashboard access for a browser (which has no admin SVID): a fresh random
        # token per start, written 0600 next to the admin credentials.
        self.dashboard_token = secrets.token_urlsafe(32)
        self.observer = Observer(self, max_bytes=settings.scrape_max_bytes)
        self.xds_status = XdsStatus()
        self.consul: ConsulStatus | None = None  # --consul: set by meshlib_control.consul.link
        self.xds_address: str | None = None  # host:port of the ADS server once it serves

    def _trust_domain(self, wanted: str) -> str:
        stored = self.store.get_meta("trust_domain")
        if stored is None:
            self.store.set_meta("trust_domain", wanted)
            return wanted
        if stored != wanted and wanted != Settings().trust_domain:
            raise ApiError(
                500,
                "config",
                f"--trust-domain: this data dir belongs to trust domain {stored!r}, not {wanted!r}",
            )
        return stored

    def _renew_leases(self) -> None:
        now = utc_now()
        for record in self.store.instances():
            self.store.upsert_instance(replace(record, expires_at=now + self.settings.instance_ttl))

    def follow_store(self, loop: asyncio.AbstractEventLoop) -> None:
        """Rebuild snapshots on *loop* when another replica changes the mesh state.

        The store calls back from its watch thread; notices that arrive while a rebuild is
        pending are folded into it, so a burst of changes costs one rebuild.
        """
        pending = False

        def rebuild() -> None:
            nonlocal pending
            pending = False
            try:
                self.refresh()
            except Exception:  # a bad rebuild must not stop the next one
                log.exception("snapshot rebuild after a store change failed")

        def notice() -> None:
            nonlocal pending
            if not pending:
                pending = True
                loop.call_soon(rebuild)

        def from_watch_thread() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the service stopped
                loop.call_soon_threadsafe(notice)

        self.store.subscribe(from_watch_thread)

    def report_sidecar(self, instance_id: str, version: str, error: str | None) -> None:
        """Record what an Envoy applied or rejected (from the ADS stream), best effort.

        While the store refuses writes (etcd without quorum) the report is dropped with a
        log line: failing the ADS stream for it would only make Envoy reconnect.
        """
        try:
            self.store.record_report(instance_id, version, error)
        except StoreUnavailable as exc:
            log.info("sidecar %s's report of %s not stored: %s", instance_id, version, exc)

    def expire(self) -> int:
        """Drop instances that stopped heartbeating; refresh snapshots if any went."""
        removed = self.store.expire_instances(utc_now())
        if removed:
            log.info("expired %d instance(s)", removed)
            self.refresh()
        return removed

    def control_svid(self) -> SVID:
        """A fresh serving certificate for the control service itself."""
        issued, key = self.ca.issue_local(
            self.control_id, CONTROL_CERT_TTL, extra_dns=("localhost",), extra_ips=("127.0.0.1",)
        )
        self._record(issued.serial, issued.spiffe_id, issued.not_before, issued.not_after)
        return SVID.from_pem(issued.cert_pem, key, self.ca.bundle_pem)

    def write_admin_credentials(self, url: str) -> Path:
        """Write the admin SVID (0600) and the control URL into the data dir."""
        admin_dir = self.data_dir / "admin"
        admin_dir.mkdir(mode=0o700, exist_ok=True)
        current = admin_dir / "admin.pem"
        reissue = True
        if current.exists():
            try:
                svid = SVID.from_pem(
                    current.read_bytes(),
                    (admin_dir / "admin.key").read_bytes(),
                    self.ca.bundle_pem,
                )
                expiring = svid.not_after - utc_now() < timedelta(days=7)
                # After a signing switch (root rotation) the old admin certificate chains
                # to a root that is about to be retired: reissue it from the current CA.
                leaf = load_pem_certificates(svid.cert_chain_pem)[0]
                reissue = expiring or not self.ca.is_issuer_of(leaf)
            except (OSError, IdentityError):
                reissue = True
        if reissue:
            issued, key = self.ca.issue_local(self.admin_id, ADMIN_CERT_TTL)
            self._record(issued.serial, issued.spiffe_id, issued.not_before, issued.not_after)
            write_private_file(admin_dir / "admin.key", key)
            write_private_file(current, issued.cert_pem)
        write_private_file(admin_dir / "bundle.pem", self.ca.bundle_pem)
        write_private_file(admin_dir / "dashboard.token", self.dashboard_token.encode())
        info = {"url": url, "trustDomain": self.trust_domain, "controlId": str(self.control_id)}
        write_private_file(self.data_dir / "control.json", json.dumps(info).encode())
        return admin_dir

    def bundle(self) -> dict[str, Any]:
        """The trust bundle, served without authentication."""
        return {
            "trustDomain": self.trust_domain,
            "bundle": self.ca.bundle_pem.decode(),
            "fingerprints": list(self.ca.bundle_fingerprints),
            "signingRoot": self.ca.fingerprint,
            "xdsAddress": self.xds_address,
        }

    def dashboard_token_ok(self, token: str) -> bool:
        """True when *token* is this start's dashboard token (constant-time compare)."""
        return hmac.compare_digest(token.encode(), self.dashboard_token.encode())

    def root_pem(self) -> bytes:
        """The CA root in PEM."""
        return self.ca.root.public_bytes(Encoding.PEM)
