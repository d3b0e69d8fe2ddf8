"""The workload API's operations: sign (join, renew, re-bootstrap), register, report."""

from __future__ import annotations

import logging
from typing import Any

from meshlib.identity.spiffe import SpiffeId
from meshlib_control.ca.authority import CSRRejected
from meshlib_control.ca.rebootstrap import (
    RebootstrapError,
    check_credential,
    new_credential,
    parse_credential,
    requested_spiffe_id,
)
from meshlib_control.ca.tokens import TokenError, check_token, parse_token
from meshlib_control.errors import ApiError
from meshlib_control.jwks import jwks_uris
from meshlib_control.plane.base import PlaneBase, utc_now
from meshlib_control.plane.fields import check_labels, int_field
from meshlib_control.store.records import InstanceRecord

__all__ = ["MODES", "WorkloadOperations"]

log = logging.getLogger("meshlib_control")

MODES = ("library", "sidecar")


class WorkloadOperations(PlaneBase):
    """What a workload (library agent or sidecar agent) asks of the control service."""

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
                check_token(parsed, record, utc_now())
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
        now = utc_now()
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
            check_credential(parsed, record, wanted=wanted or "", now=utc_now())
        except RebootstrapError as exc:
            status = 403 if exc.code == "foreign" else 401
            raise ApiError(status, f"rebootstrap-{exc.code}", str(exc), path="rebootstrap") from exc
        assert record is not None
        return SpiffeId.parse(record.spiffe_id), parsed.credential_id

    def _claim(self, instance_id: str, peer: SpiffeId) -> None:
        """Own *instance_id* for *peer*, or ApiError 403 when another identity owns it."""
        owner = self.store.claim_instance(
            instance_id, str(peer), utc_now(), keep=self.settings.max_owned_ids_per_identity
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
        live = self.store.live_instances_of(str(peer), utc_now())
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
        port = int_field(body, "port", optional=False)
        assert port is not None
        address = body.get("address", "")
        if not isinstance(address, str) or (port > 0 and not address):
            raise ApiError(400, "invalid", "address: required when port > 0", path="address")
        labels = check_labels(body.get("labels", {}), self.settings)
        mode = body.get("mode", "library")
        if mode not in MODES:
            raise ApiError(400, "invalid", f"mode: must be one of {', '.join(MODES)}", path="mode")
        plaintext_port = int_field(body, "plaintextPort", optional=True)
        admin_port = int_field(body, "adminPort", optional=True)
        now = utc_now()
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

    def jwks_refresh(self, body: dict[str, Any], peer: SpiffeId) -> dict[str, Any]:
        """A workload met a token whose ``kid`` its key set lacks: refresh that jwksUri.

        Only a URI that a RequestAuthentication of the caller's namespace names may be
        asked for; within ``min_gap`` of the last fetch the request is answered
        ``scheduled: false`` and nothing is fetched (a flood costs one fetch per gap).
        """
        if not peer.is_workload or peer.namespace is None:
            raise ApiError(403, "forbidden", f"{peer} is not a workload identity")
        uri, kid = body.get("jwksUri"), body.get("kid")
        if not isinstance(uri, str) or not uri:
            raise ApiError(400, "invalid", "jwksUri: required, a string", path="jwksUri")
        if kid is not None and (not isinstance(kid, str) or len(kid) > 256):
            raise ApiError(400, "invalid", "kid: a string of at most 256 characters", path="kid")
        if uri not in jwks_uris(self.store.resources(), peer.namespace):
            raise ApiError(
                400,
                "invalid",
                f"jwksUri: no RequestAuthentication of namespace {peer.namespace} names it",
                path="jwksUri",
            )
        scheduled = self.jwks.request(uri)
        if scheduled:
            log.info("%s: unknown kid %r, refreshing %s", peer, kid, uri)
        return {"scheduled": scheduled}
