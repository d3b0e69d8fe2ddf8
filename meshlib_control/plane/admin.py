"""The admin API's operations: resources, join tokens and listings."""

from __future__ import annotations

from typing import Any

from meshlib.errors import ConfigError, IdentityError, MeshError, PolicyError
from meshlib.identity.spiffe import SpiffeId
from meshlib.policy.decode import decode_documents, encode_resource
from meshlib.policy.model import KINDS
from meshlib_control.api.limits import check_yaml
from meshlib_control.ca.tokens import MAX_TOKEN_TTL, MAX_TOKEN_USES, new_token, parse_ttl
from meshlib_control.errors import ApiError
from meshlib_control.plane.base import PlaneBase, utc_now
from meshlib_control.plane.references import (
    dry_run_actions,
    known_services,
    unknown_service_warnings,
)
from meshlib_control.xds.status import XdsStatus

__all__ = ["AdminOperations"]


class AdminOperations(PlaneBase):
    """What an operator (``meshctl``, the dashboard) asks of the control service."""

    xds_status: XdsStatus

    def apply(self, text: str, *, dry_run: bool = False) -> dict[str, Any]:
        """Validate every document, then store them all in one transaction.

        The text is first scanned for nesting depth and alias expansion
        (:func:`~meshlib_control.api.limits.check_yaml`): a billion-laughs document is
        refused before it is built. With *dry_run* nothing is stored: the answer says what
        would be done. Either way, resources naming a service the control service does not
        know are stored (services may register later) and listed under ``warnings``.
        """
        check_yaml(text)
        try:
            resources = decode_documents(text)
        except PolicyError as exc:
            raise ApiError(400, "invalid", str(exc), path=exc.path) from exc
        if not resources:
            raise ApiError(400, "invalid", "no documents in the input", path="documents")
        warnings = unknown_service_warnings(
            resources, known_services(self.store, self.state().instances)
        )
        if dry_run:
            results = dry_run_actions(resources, self.store)
        else:
            results = self.store.apply(resources, utc_now())
            self.refresh()
        return {
            "results": [
                {
                    "kind": r.kind,
                    "namespace": r.metadata.namespace,
                    "name": r.metadata.name,
                    "action": action,
                }
                for r, action in results
            ],
            "warnings": warnings,
            "dryRun": dry_run,
        }

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
                ca_fingerprint=self.ca.bundle_fingerprints,  # the bundle, not one root
                now=utc_now(),
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
