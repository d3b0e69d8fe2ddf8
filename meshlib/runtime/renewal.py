"""Getting a new SVID when the current one cannot renew it: expired, or about to be.

An expired certificate cannot authenticate a renewal over mTLS (the control service aborts
that handshake), so the agent never presents it. It rejoins instead, in this order:

1. the **re-bootstrap credential** of its last sign (one use, bound to its SPIFFE ID, kept
   0600 beside the key): ``/v1/sign`` over TLS that authenticates only the server, pinned
   to the trust bundle the workload already holds, with a fresh CSR;
2. the join token it was started with, if any (usually spent by then);

and when neither is accepted it says exactly that, not "control service unreachable".
The sidecar agent runs the same :class:`~meshlib.runtime.agent.Agent`, so it shares this.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from meshlib.errors import ConfigError, ControlPlaneError
from meshlib.identity.keys import build_csr
from meshlib.identity.spiffe import SpiffeId
from meshlib.identity.svid import SVID, certificate_fingerprint, load_pem_certificates
from meshlib.identity.tls import build_client_context
from meshlib.runtime.control_client import ControlClient, fetch_bundle_unverified

__all__ = [
    "EXPIRY_MARGIN",
    "RebootstrapCredential",
    "is_refusal",
    "is_unusable",
    "parse_token_fingerprint",
    "parse_token_fingerprints",
    "rejoin",
    "renewal_backoff",
    "sign_with_credential",
    "sign_with_token",
]

log = logging.getLogger("meshlib.agent")

# Below this much validity an mTLS renewal may present a certificate that expires during
# the handshake; rejoin with the credential instead.
EXPIRY_MARGIN = timedelta(seconds=2)
RETRY_BASE = 0.25
RETRY_MAX = 5.0  # control unreachable: retry soon, it may be back any moment
REFUSED_RETRY_MAX = 30.0  # refused: only an operator can help; keep trying, slowly


@dataclass(frozen=True, slots=True)
class RebootstrapCredential:
    """The credential the last sign returned; ``repr()`` hides the secret."""

    credential: str = field(repr=False)
    credential_id: str
    spiffe_id: str
    expires_at: datetime

    @classmethod
    def from_answer(cls, answer: dict[str, Any]) -> RebootstrapCredential | None:
        """The credential in a ``/v1/sign`` answer (None from an older control service)."""
        body, spiffe_id = answer.get("rebootstrap"), answer.get("spiffeId")
        if not isinstance(body, dict) or not isinstance(spiffe_id, str):
            return None
        try:
            return cls(
                credential=str(body["credential"]),
                credential_id=str(body["id"]),
                spiffe_id=spiffe_id,
                expires_at=datetime.fromisoformat(str(body["expiresAt"])),
            )
        except (KeyError, ValueError):
            return None

    def to_json(self) -> dict[str, str]:
        """The form kept on disk (0600)."""
        return {
            "credential": self.credential,
            "id": self.credential_id,
            "spiffeId": self.spiffe_id,
            "expiresAt": self.expires_at.isoformat(),
        }

    @classmethod
    def from_json(cls, data: Any) -> RebootstrapCredential | None:
        """Read :meth:`to_json`'s form; None when it is not that."""
        if not isinstance(data, dict):
            return None
        return cls.from_answer({"spiffeId": data.get("spiffeId"), "rebootstrap": data})


def is_unusable(svid: SVID, now: datetime) -> bool:
    """True when *svid* can no longer (safely) authenticate a renewal over mTLS."""
    return svid.not_after - now <= EXPIRY_MARGIN


def is_refusal(exc: ControlPlaneError) -> bool:
    """True when the control service answered and said no (a 4xx), not when unreachable."""
    return exc.status is not None and 400 <= exc.status < 500


def renewal_backoff(attempt: int, *, refused: bool = False) -> float:
    """Seconds before retry *attempt* (1, 2, …): exponential, capped, jittered 50-100 %."""
    cap = REFUSED_RETRY_MAX if refused else RETRY_MAX
    return float(min(cap, RETRY_BASE * 2.0 ** max(0, attempt)) * (0.5 + random.random() / 2))


def parse_token_fingerprints(token: str) -> tuple[str, ...]:
    """The roots a join token pins (``mesh1.<id>.<secret>.<fp>[-<fp>…]``), ``sha256:<hex>``.

    The control service pins the whole trust bundle of the token's creation, so a token
    made during a root rotation works against replicas signing from either root.
    """
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != "mesh1" or not parts[3]:
        raise ConfigError(
            "MESH_TOKEN: not a meshlib join token (expected mesh1.<id>.<secret>.<ca>)"
        )
    return tuple("sha256:" + pin.lower() for pin in parts[3].split("-"))


def parse_token_fingerprint(token: str) -> str:
    """The first root a join token pins (see :func:`parse_token_fingerprints`)."""
    return parse_token_fingerprints(token)[0]


async def sign_with_token(
    *,
    url: str,
    token: str,
    namespace: str,
    service: str,
    key: ec.EllipticCurvePrivateKey,
    instance_id: str,
    files_dir: Path,
) -> dict[str, Any]:
    """``/v1/sign`` with a join token; the first contact trusts only the roots it pins.

    The bundle is fetched without verification, and only the roots whose fingerprints
    the token carries are kept: the control service must present a chain to one of them.
    """
    pinned = set(parse_token_fingerprints(token))
    bundle = await fetch_bundle_unverified(url)
    roots = [
        c
        for c in load_pem_certificates(bundle["bundle"].encode())
        if certificate_fingerprint(c) in pinned
    ]
    if not roots:
        shown = ", ".join(sorted(p[:19] + "…" for p in pinned))
        raise ControlPlaneError(
            f"the control service at {url} holds none of the roots pinned by the join "
            f"token ({shown}); refusing to trust it",
            status=495,
        )
    td = bundle["trustDomain"]
    ctx = build_client_context(
        None, b"".join(r.public_bytes(Encoding.PEM) for r in roots), files_dir
    )
    client = ControlClient(url, expected=f"spiffe://{td}/control", tls=lambda: ctx)
    try:
        spiffe_id = SpiffeId.for_service(td, namespace, service)
        return await client.sign(build_csr(key, spiffe_id), token=token, instance_id=instance_id)
    finally:
        await client.aclose()


async def sign_with_credential(
    *,
    url: str,
    svid: SVID,
    credential: RebootstrapCredential,
    csr_pem: bytes,
    instance_id: str,
    files_dir: Path,
) -> dict[str, Any]:
    """``/v1/sign`` with *credential*, over TLS pinned to *svid*'s bundle, no client cert."""
    ctx = build_client_context(None, svid.bundle_pem, files_dir)
    client = ControlClient(
        url, expected=f"spiffe://{svid.spiffe_id.trust_domain}/control", tls=lambda: ctx
    )
    try:
        return await client.sign(
            csr_pem, rebootstrap=credential.credential, instance_id=instance_id
        )
    finally:
        await client.aclose()


async def rejoin(
    *,
    url: str,
    svid: SVID,
    credential: RebootstrapCredential | None,
    csr_pem: bytes,
    instance_id: str,
    files_dir: Path,
    now: datetime,
    with_token: Callable[[], Awaitable[dict[str, Any]]] | None,
) -> dict[str, Any]:
    """Sign *csr_pem* for an SVID that cannot renew itself; the ``/v1/sign`` answer.

    Args:
        svid: the expired (or expiring) SVID: its identity and trust bundle; its key and
            certificate are not used.
        credential: the stored re-bootstrap credential, if any.
        with_token: signs the same key's CSR with the join token (pinned first
            contact), if there is one.

    Raises:
        ControlPlaneError: starting ``SVID expired at <time>``; with no status when the
            control service is unreachable (retry), a 4xx when every way in was refused.
    """
    verb = "expired" if svid.not_after <= now else "expires"
    reason = f"SVID {verb} at {svid.not_after.isoformat()}"
    refusals: list[str] = []
    if credential is not None and credential.spiffe_id == str(svid.spiffe_id):
        log.warning(
            "%s; renewing with the re-bootstrap credential %s", reason, credential.credential_id
        )
        try:
            return await sign_with_credential(
                url=url,
                svid=svid,
                credential=credential,
                csr_pem=csr_pem,
                instance_id=instance_id,
                files_dir=files_dir,
            )
        except ControlPlaneError as exc:
            if not is_refusal(exc):
                raise ControlPlaneError(
                    f"{reason}; renewing with the re-bootstrap credential: {exc}"
                ) from exc
            refusals.append(f"the re-bootstrap credential was refused: {exc}")
    elif credential is not None:
        refusals.append(f"the stored re-bootstrap credential is for {credential.spiffe_id}")
    else:
        refusals.append(f"there is no re-bootstrap credential in {files_dir}")
    if with_token is not None:
        log.warning("%s; %s; trying the join token", reason, refusals[-1])
        try:
            return await with_token()
        except ControlPlaneError as exc:
            if not is_refusal(exc):
                raise ControlPlaneError(f"{reason}; renewing with the join token: {exc}") from exc
            refusals.append(f"the join token was refused: {exc}")
    else:
        refusals.append("no join token is configured (MESH_TOKEN)")
    raise ControlPlaneError(
        f"{reason}, and {'; '.join(refusals)}. Give this workload a new join token "
        f"(meshctl token create --service {svid.spiffe_id.service} "
        f"--namespace {svid.spiffe_id.namespace})",
        status=401,
    )
