"""ControlPlane: the control service's operations, independent of HTTP.

The API modules translate requests into these calls; every refusal is an
:class:`~meshlib_control.errors.ApiError` naming the field and the reason, raised before
anything is written.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from meshlib.errors import ConfigError, IdentityError, MeshError, PolicyError
from meshlib.identity.keys import write_private_file
from meshlib.identity.spiffe import SpiffeId
from meshlib.identity.svid import SVID
from meshlib.policy.decode import decode_documents, encode_resource
from meshlib.policy.model import KINDS
from meshlib_control.api.limits import check_yaml
from meshlib_control.ca.authority import CertificateAuthority, CSRRejected
from meshlib_control.ca.rebootstrap import (
    RebootstrapError,
    check_credential,
    new_credential,
    parse_credential,
    requested_spiffe_id,
)
from meshlib_control.ca.tokens import (
    MAX_TOKEN_TTL,
    MAX_TOKEN_USES,
    TokenError,
    check_token,
    new_token,
    parse_token,
    parse_ttl,
)
from meshlib_control.errors import ApiError
from meshlib_control.observe.scraper import Observer
from meshlib_control.settings import ADMIN_CERT_TTL, CONTROL_CERT_TTL, Settings
from meshlib_control.snapshot.builder import MeshState
from meshlib_control.snapshot.cache import SnapshotCache
from meshlib_control.store.sqlite import CertificateRecord, InstanceRecord, SQLiteStore
from meshlib_control.xds.status import XdsStatus

__all__ = ["ControlPlane"]

log = logging.getLogger("meshlib_control")

MODES = ("library", "sidecar")


def _now() -> datetime:
    return datetime.now(UTC)


def _check_labels(labels: object, settings: Settings) -> tuple[tuple[str, str], ...]:
    """*labels* as sorted pairs, or ApiError naming the label and the limit it breaks."""
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ApiError(400, "invalid", "labels: must map strings to strings", path="labels")
    if len(labels) > settings.max_labels:
        raise ApiError(
            400,
            "too-many-labels",
            f"labels: {len(labels)} labels, more than the limit of {settings.max_labels} "
            "per instance (--max-labels)",
            path="labels",
        )
    total = 0
    for key, value in labels.items():
        key_bytes, value_bytes = len(key.encode()), len(value.encode())
        if not key_bytes or key_bytes > settings.max_label_key_bytes:
            raise ApiError(
                400,
                "label-too-large",
                f"labels: key {key[:40]!r}… must be 1..{settings.max_label_key_bytes} bytes "
                f"(--max-label-key-bytes), got {key_bytes}",
                path="labels",
            )
        if value_bytes > settings.max_label_value_bytes:
            raise ApiError(
                400,
                "label-too-large",
                f"labels.{key}: value of {value_bytes} bytes, more than the limit of "
                f"{settings.max_label_value_bytes} (--max-label-value-bytes)",
                path=f"labels.{key}",
            )
        total += key_bytes + value_bytes
    if total > settings.max_labels_bytes:
        raise ApiError(
            400,
            "label-too-large",
            f"labels: {total} bytes of keys and values, more than the limit of "
            f"{settings.max_labels_bytes} per instance (--max-labels-bytes)",
            path="labels",
        )
    return tuple(sorted(labels.items()))


def _int_field(body: dict[str, Any], name: str, *, optional: bool) -> int | None:
    value = body.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise ApiError(400, "invalid", f"{name}: must be an integer port 0..65535", path=name)
    return value


class ControlPlane:
    """CA, store, registry and snapshot cache of one control service."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.data_dir, 0o700)
        self.store = SQLiteStore(self.data_dir / "mesh.db")
        self.trust_domain = self._trust_domain(settings.trust_domain)
        if settings.ca_cert is not None and settings.ca_key is not None:
            self.ca = CertificateAuthority.from_files(
                settings.ca_cert, settings.ca_key, self.trust_domain
            )
        else:
            self.ca = CertificateAuthority.load_or_create(self.data_dir, self.trust_domain)
        self.control_id = SpiffeId(self.trust_domain, "/control")
        self.admin_id = SpiffeId(self.trust_domain, "/admin")
        # A restarted control service must not expire instances that could not heartbeat
        # while it was down: give every registration a fresh lease.
        self._renew_leases()
        self.cache = SnapshotCache(self.state())
        # Read-only dashboard access for a browser (which has no admin SVID): a fresh random
        # token per start, written 0600 next to the admin credentials.
        self.dashboard_token = secrets.token_urlsafe(32)
        self.observer = Observer(self, max_bytes=settings.scrape_max_bytes)
        self.xds_status = XdsStatus()
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
        now = _now()
        for record in self.store.instances():
            self.store.upsert_instance(replace(record, expires_at=now + self.settings.instance_ttl))

    # ------------------------------------------------------------------ state

    def state(self) -> MeshState:
        """The current resources and live instances."""
        return MeshState(
            trust_domain=self.trust_domain,
            resources=self.store.resources(),
            instances=tuple(i for i in self.store.instances() if i.expires_at >= _now()),
        )

    def refresh(self) -> int:
        """Rebuild snapshots from the store; returns how many watches were woken."""
        return self.cache.set_state(self.state())

    def expire(self) -> int:
        """Drop instances that stopped heartbeating; refresh snapshots if any went."""
        removed = self.store.expire_instances(_now())
        if removed:
            log.info("expired %d instance(s)", removed)
            self.refresh()
        return removed

    # ------------------------------------------------------------------ own certificates

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
                reissue = svid.not_after - _now() < timedelta(days=7)
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

    def _record(
        self, serial: int, spiffe_id: str, not_before: datetime, not_after: datetime
    ) -> None:
        self.store.record_certificate(
            CertificateRecord(f"{serial:x}", spiffe_id, not_before, not_after, _now())
        )

    # ------------------------------------------------------------------ workload API

    def bundle(self) -> dict[str, Any]:
        """The trust bundle, served without authentication."""
        return {
            "trustDomain": self.trust_domain,
            "bundle": self.ca.bundle_pem.decode(),
            "fingerprints": [self.ca.fingerprint],
            "xdsAddress": self.xds_address,
        }

    def sign(self, body: dict[str, Any], peer: SpiffeId | None) -> dict[str, Any]:
        """Sign a CSR and hand out the next re-bootstrap credential.

        The caller is entitled by a join token (``token``), by its current SVID over mTLS
        (renewal), or by the re-bootstrap credential of its last sign (``rebootstrap``:
        for a workload whose SVID expired, over server-authenticated TLS). A credential is
        spent in the same transaction that stores its successor; a refusal spends nothing.
        """
        csr = body.get("csr")
        if not isinstance(csr, str) or not csr.strip():
            raise ApiError(400, "invalid", "csr: required, a PEM certificate request", path="csr")
        instance_id = body.get("instanceId", "")
        if (
            not isinstance(instance_id, str)
            or len(instance_id) > 64
            or not (instance_id == "" or instance_id.isalnum())
        ):
            raise ApiError(400, "invalid", "instanceId: 1-64 letters and digits", path="instanceId")
        token_text = body.get("token")
        credential_text = body.get("rebootstrap")
        consume: str | None = None
        spend: str | None = None
        if credential_text is not None:
            if token_text is not None:
                raise ApiError(
                    400, "invalid", "token, rebootstrap: give one or the other", path="rebootstrap"
                )
            entitled, spend = self._rebootstrap_entitlement(credential_text, csr)
        elif peer is not None and peer.is_workload and token_text is None:
            entitled = peer
        else:
            if not isinstance(token_text, str) or not token_text:
                raise ApiError(
                    401,
                    "unauthenticated",
                    "token: required (a join token, or renew over mTLS with a current SVID, "
                    "or rebootstrap: the credential of the last sign)",
                    path="token",
                )
            try:
                parsed = parse_token(token_text)
                record = self.store.token(parsed.token_id)
                check_token(parsed, record, _now())
            except TokenError as exc:
                raise ApiError(401, f"token-{exc.code}", str(exc), path="token") from exc
            assert record is not None
            entitled = SpiffeId.parse(record.spiffe_id)
            consume = parsed.token_id
        try:
            issued = self.ca.sign_csr(csr.encode(), entitled=entitled, ttl=self.settings.svid_ttl)
        except CSRRejected as exc:
            raise ApiError(400, "csr-rejected", f"csr: {exc.reason}", path="csr") from exc
        if consume is not None and not self.store.consume_token(consume):
            raise ApiError(
                401, "token-used-up", f"join token {consume} has no uses left", path="token"
            )
        now = _now()
        credential, next_record = new_credential(
            spiffe_id=issued.spiffe_id,
            instance_id=instance_id,
            ttl=self.settings.rebootstrap_ttl,
            now=now,
        )
        if not self.store.issue_rebootstrap(next_record, spend=spend, now=now):
            raise ApiError(
                401,
                "rebootstrap-spent",
                f"re-bootstrap credential {spend} was already used",
                path="rebootstrap",
            )
        if spend is not None:
            log.warning("%s rejoined with re-bootstrap credential %s", issued.spiffe_id, spend)
        self._record(issued.serial, issued.spiffe_id, issued.not_before, issued.not_after)
        return {
            "certificate": issued.cert_pem.decode(),
            "bundle": self.ca.bundle_pem.decode(),
            "spiffeId": issued.spiffe_id,
            "notAfter": issued.not_after.isoformat(),
            "rebootstrap": {
                "credential": credential,
                "id": next_record.credential_id,
                "expiresAt": next_record.expires_at.isoformat(),
            },
        }

    def _rebootstrap_entitlement(self, text: object, csr: str) -> tuple[SpiffeId, str]:
        """The identity a re-bootstrap credential entitles to, and its id; or ApiError."""
        try:
            parsed = parse_credential(text)
            record = self.store.rebootstrap_credential(parsed.credential_id)
            wanted = requested_spiffe_id(csr.encode())
            if wanted is None and record is not None:
                wanted = record.spiffe_id  # the CA refuses the CSR itself, with its reason
            check_credential(parsed, record, wanted=wanted or "", now=_now())
        except RebootstrapError as exc:
            status = 403 if exc.code == "foreign" else 401
            raise ApiError(status, f"rebootstrap-{exc.code}", str(exc), path="rebootstrap") from exc
        assert record is not None
        return SpiffeId.parse(record.spiffe_id), parsed.credential_id

    def revoke_rebootstrap(self, body: dict[str, Any]) -> dict[str, Any]:
        """Revoke the unspent re-bootstrap credentials of one identity (token revoke)."""
        service = body.get("service")
        namespace = body.get("namespace", "default")
        try:
            if not isinstance(service, str) or not isinstance(namespace, str):
                raise IdentityError("service and namespace must be strings")
            spiffe_id = SpiffeId.for_service(self.trust_domain, namespace, service)
        except IdentityError as exc:
            raise ApiError(400, "invalid", f"service: {exc}", path="service") from exc
        revoked = self.store.revoke_rebootstrap(str(spiffe_id))
        return {"spiffeId": str(spiffe_id), "revokedRebootstrapCredentials": revoked}

    def _claim(self, instance_id: str, peer: SpiffeId) -> None:
        """Own *instance_id* for *peer*, or ApiError 403 when another identity owns it."""
        owner = self.store.claim_instance(
            instance_id, str(peer), _now(), keep=self.settings.max_owned_ids_per_identity
        )
        if owner != str(peer):
            raise ApiError(
                403,
                "forbidden",
                f"instanceId: instance {instance_id} belongs to {owner}",
                path="instanceId",
            )

    def claim_node(self, instance_id: str, peer: SpiffeId) -> None:
        """An ADS stream names *instance_id* (``node.id``): it must be *peer*'s own.

        A sidecar opens its stream before it registers, so an unowned id is claimed here;
        one owned by another identity is refused (ApiError 403) and nothing is written.
        """
        if not instance_id.isalnum() or len(instance_id) > 64:
            raise ApiError(400, "invalid", "node.id: 1-64 letters and digits", path="node.id")
        owner = self.store.instance_owner(instance_id)
        if owner is not None and owner != str(peer):
            raise ApiError(
                403,
                "forbidden",
                f"node.id: instance {instance_id} belongs to {owner}",
                path="node.id",
            )
        if owner is None:
            self._check_instance_quota(peer)
            self._claim(instance_id, peer)

    def _check_instance_quota(self, peer: SpiffeId) -> None:
        live = self.store.live_instances_of(str(peer), _now())
        limit = self.settings.max_instances_per_identity
        if live >= limit:
            raise ApiError(
                429,
                "quota-exceeded",
                f"instanceId: {peer} already has {live} live instances, the limit per "
                f"identity (--max-instances-per-identity {limit})",
                path="instanceId",
            )

    def register(
        self,
        instance_id: str,
        body: dict[str, Any],
        peer: SpiffeId,
        *,
        source: str | None = None,
    ) -> dict[str, Any]:
        """Create or refresh an instance's registration (the heartbeat).

        *source* is the IP address the request came from; the observer scrapes an admin
        port only at the address the instance registered from (docs/operations.md).
        Instance ids are owned by the first identity that registers them, for good: a
        lapsed lease does not free the id (another identity gets 403), and the owner can
        always come back with it.
        """
        if not peer.is_workload or peer.service is None or peer.namespace is None:
            raise ApiError(403, "forbidden", f"{peer} is not a workload identity")
        if not instance_id.isalnum() or len(instance_id) > 64:
            raise ApiError(400, "invalid", "instanceId: 1-64 letters and digits", path="instanceId")
        port = _int_field(body, "port", optional=False)
        assert port is not None
        address = body.get("address", "")
        if not isinstance(address, str) or (port > 0 and not address):
            raise ApiError(400, "invalid", "address: required when port > 0", path="address")
        labels = _check_labels(body.get("labels", {}), self.settings)
        mode = body.get("mode", "library")
        if mode not in MODES:
            raise ApiError(400, "invalid", f"mode: must be one of {', '.join(MODES)}", path="mode")
        plaintext_port = _int_field(body, "plaintextPort", optional=True)
        admin_port = _int_field(body, "adminPort", optional=True)
        now = _now()
        old = self.store.instance(instance_id)
        owner = self.store.instance_owner(instance_id)
        if owner is not None and owner != str(peer):
            raise ApiError(
                403,
                "forbidden",
                f"instanceId: instance {instance_id} belongs to {owner}",
                path="instanceId",
            )
        if old is None or old.expires_at < now:
            self._check_instance_quota(peer)
        self._claim(instance_id, peer)
        if old is not None and old.spiffe_id != str(peer):
            old = None  # a record from before ids were owned: nothing of it carries over
        record = InstanceRecord(
            id=instance_id,
            spiffe_id=str(peer),
            service=peer.service,
            namespace=peer.namespace,
            address=address,
            port=port,
            plaintext_port=plaintext_port,
            admin_port=admin_port,
            labels=labels,
            mode=mode,
            registered_at=old.registered_at if old else now,
            last_seen=now,
            expires_at=now + self.settings.instance_ttl,
            applied_version=old.applied_version if old else None,
            rejected_version=old.rejected_version if old else None,
            rejection=old.rejection if old else None,
            source=source,
        )
        self.store.upsert_instance(record)
        if old is None or old.endpoint_key() != record.endpoint_key() or old.expires_at < now:
            self.refresh()
        return {"ttlSeconds": self.settings.instance_ttl.total_seconds()}

    def _owned(self, instance_id: str, peer: SpiffeId) -> InstanceRecord:
        owner = self.store.instance_owner(instance_id)
        record = self.store.instance(instance_id)
        if owner is None and record is not None:
            owner = record.spiffe_id
        if owner is not None and owner != str(peer):
            raise ApiError(
                403,
                "forbidden",
                f"instanceId: instance {instance_id} belongs to {owner}",
                path="instanceId",
            )
        if record is None:
            raise ApiError(404, "not-found", f"instance {instance_id} is not registered")
        return record

    def deregister(self, instance_id: str, peer: SpiffeId) -> None:
        """Remove an instance at its own request; its owner gives the id up too."""
        self._owned(instance_id, peer)
        self.store.delete_instance(instance_id)
        self.store.release_instance(instance_id)
        self.refresh()

    def report(self, instance_id: str, body: dict[str, Any], peer: SpiffeId) -> None:
        """Record which snapshot an instance applied, or why it rejected one."""
        self._owned(instance_id, peer)
        version = body.get("version")
        error = body.get("error")
        if not isinstance(version, str) or not version:
            raise ApiError(400, "invalid", "version: required", path="version")
        if error is not None and not isinstance(error, str):
            raise ApiError(400, "invalid", "error: must be a string or null", path="error")
        self.store.record_report(instance_id, version, error)

    # ------------------------------------------------------------------ admin API

    def apply(self, text: str) -> list[dict[str, str]]:
        """Validate every document, then store them all in one transaction.

        The text is first scanned for nesting depth and alias expansion
        (:func:`~meshlib_control.api.limits.check_yaml`): a billion-laughs document is
        refused before it is built.
        """
        check_yaml(text)
        try:
            resources = decode_documents(text)
        except PolicyError as exc:
            raise ApiError(400, "invalid", str(exc), path=exc.path) from exc
        if not resources:
            raise ApiError(400, "invalid", "no documents in the input", path="documents")
        results = self.store.apply(resources, _now())
        self.refresh()
        return [
            {
                "kind": r.kind,
                "namespace": r.metadata.namespace,
                "name": r.metadata.name,
                "action": action,
            }
            for r, action in results
        ]

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in KINDS:
            raise ApiError(
                400, "invalid", f"kind: {kind!r} is not one of {', '.join(KINDS)}", path="kind"
            )

    def get(self, kind: str, namespace: str | None, name: str | None) -> list[dict[str, Any]]:
        """Stored resources of *kind*, optionally one namespace or one name."""
        self._check_kind(kind)
        revisions = self.store.resource_revisions()
        items: list[dict[str, Any]] = []
        for resource in self.store.resources():
            if resource.kind != kind:
                continue
            if namespace is not None and resource.metadata.namespace != namespace:
                continue
            if name is not None and resource.metadata.name != name:
                continue
            doc = encode_resource(resource)
            revision, updated = revisions[resource.key]
            doc["status"] = {"revision": revision, "updatedAt": updated}
            items.append(doc)
        if name is not None and not items:
            raise ApiError(404, "not-found", f"{kind} {namespace or 'default'}/{name} not found")
        return items

    def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete one resource."""
        self._check_kind(kind)
        if not self.store.delete_resource(kind, namespace, name):
            raise ApiError(404, "not-found", f"{kind} {namespace}/{name} not found")
        self.refresh()

    def create_token(self, body: dict[str, Any]) -> dict[str, Any]:
        """A join token for one service identity."""
        service = body.get("service")
        namespace = body.get("namespace", "default")
        try:
            if not isinstance(service, str) or not isinstance(namespace, str):
                raise IdentityError("service and namespace must be strings")
            spiffe_id = SpiffeId.for_service(self.trust_domain, namespace, service)
        except IdentityError as exc:
            raise ApiError(400, "invalid", f"service: {exc}", path="service") from exc
        ttl_text = body.get("ttl", "1h")
        if not isinstance(ttl_text, str):
            raise ApiError(
                400, "invalid", "ttl: must be a duration string like 30s, 15m, 1h or 7d", path="ttl"
            )
        try:
            ttl = parse_ttl(ttl_text)
        except MeshError as exc:
            raise ApiError(400, "invalid", str(exc), path="ttl") from exc
        if ttl > MAX_TOKEN_TTL:
            raise ApiError(
                400,
                "invalid",
                f"ttl: must be at most {MAX_TOKEN_TTL.days}d, got {ttl_text}",
                path="ttl",
            )
        uses = body.get("uses", 1)
        if not isinstance(uses, int) or isinstance(uses, bool) or not 1 <= uses <= MAX_TOKEN_USES:
            shown = uses if not isinstance(uses, int) or abs(uses) < 10**12 else "a huge integer"
            raise ApiError(
                400,
                "invalid",
                f"uses: must be an integer 1..{MAX_TOKEN_USES}, got {shown!r}",
                path="uses",
            )
        try:
            token, record = new_token(
                spiffe_id=str(spiffe_id),
                ttl=ttl,
                uses=uses,
                ca_fingerprint=self.ca.fingerprint,
                now=_now(),
            )
        except ConfigError as exc:
            field = str(exc).partition(":")[0]
            raise ApiError(400, "invalid", str(exc), path=field) from exc
        self.store.add_token(record)
        return {
            "token": token,
            "id": record.token_id,
            "spiffeId": record.spiffe_id,
            "expiresAt": record.expires_at.isoformat(),
            "uses": record.uses_left,
        }

    def list_services(self) -> list[dict[str, Any]]:
        """Services with their instance counts and attached policies."""
        state = self.state()
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for inst in state.instances:
            entry = out.setdefault(
                (inst.namespace, inst.service),
                {"name": inst.service, "namespace": inst.namespace, "instances": 0, "modes": []},
            )
            entry["instances"] += 1
            if inst.mode not in entry["modes"]:
                entry["modes"].append(inst.mode)
        return [out[k] for k in sorted(out)]

    def list_instances(self) -> list[dict[str, Any]]:
        """Live instances."""
        return [i.to_json() for i in self.state().instances]

    def list_sidecars(self) -> list[dict[str, Any]]:
        """Envoy sidecars seen by the ADS server: versions sent, ACKed, rejected; notes."""
        return [n.to_dict() for n in self.xds_status.nodes.values()]

    def list_certificates(self) -> list[dict[str, Any]]:
        """Issued certificates: serial, identity, validity — never keys."""
        return [
            {
                "serial": c.serial,
                "spiffeId": c.spiffe_id,
                "notBefore": c.not_before.isoformat(),
                "notAfter": c.not_after.isoformat(),
                "issuedAt": c.issued_at.isoformat(),
            }
            for c in self.store.certificates()
        ]

    def list_tokens(self) -> list[dict[str, Any]]:
        """Join-token records: id, identity, expiry, uses left — never the secret."""
        return [
            {
                "id": t.token_id,
                "spiffeId": t.spiffe_id,
                "expiresAt": t.expires_at.isoformat(),
                "usesLeft": t.uses_left,
                "createdAt": t.created_at.isoformat(),
            }
            for t in self.store.tokens()
        ]

    def dashboard_token_ok(self, token: str) -> bool:
        """True when *token* is this start's dashboard token (constant-time compare)."""
        return hmac.compare_digest(token.encode(), self.dashboard_token.encode())

    def root_pem(self) -> bytes:
        """The CA root in PEM."""
        return self.ca.root.public_bytes(Encoding.PEM)
