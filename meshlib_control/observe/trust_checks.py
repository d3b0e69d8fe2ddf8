"""``meshctl check``'s trust lines: the signing chain's expiry, and who applied the bundle.

During a root rotation the operator waits, after ``meshctl ca add-root``, until every
instance trusts the new bundle before switching signing; the ``trust bundle`` check is
what tells them (each instance's admin page lists the fingerprints it trusts).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509

from meshlib_control.ca.bundle import anchor_of, describe

__all__ = ["INTERMEDIATE_WARN", "bundle_check", "signing_checks", "svid_roots_check"]

INTERMEDIATE_WARN = timedelta(days=30)

OK, WARN, FAIL = "ok", "warn", "fail"


def _check(name: str, status: str, message: str) -> dict[str, str]:
    return {"name": name, "status": status, "message": message}


def signing_checks(chain: Sequence[x509.Certificate], now: datetime) -> list[dict[str, str]]:
    """Validity of each intermediate this replica signs with (roots are checked apart)."""
    out = []
    for cert in chain:
        name = f"CA intermediate {cert.subject.rfc4514_string()}"
        left = cert.not_valid_after_utc - now
        until = cert.not_valid_after_utc.date().isoformat()
        if left <= timedelta(0):
            out.append(_check(name, FAIL, f"expired on {until}: the SVIDs it signs are invalid"))
        elif left < INTERMEDIATE_WARN:
            out.append(
                _check(
                    name,
                    WARN,
                    f"expires in {left.days} days ({until}): issue a new one "
                    "(meshctl ca intermediate) and restart the replica with it",
                )
            )
        else:
            out.append(_check(name, OK, f"valid, expires in {left.days} days ({until})"))
    return out


def bundle_check(
    fingerprints: Sequence[str], identities: Sequence[tuple[str, Any]]
) -> dict[str, str]:
    """Whether every instance trusts exactly the current bundle.

    Args:
        fingerprints: the control service's bundle.
        identities: (instance label, its ``/debug/identity`` answer: a dict, or an error
            string when unreadable).
    """
    wanted = sorted(fingerprints)
    behind: list[str] = []
    unknown = 0
    for who, identity in identities:
        trusted = identity.get("bundleFingerprints") if isinstance(identity, dict) else None
        if not isinstance(trusted, list):
            unknown += 1
        elif sorted(str(f) for f in trusted) != wanted:
            behind.append(who)
    applied = len(identities) - unknown - len(behind)
    message = f"{len(wanted)} root(s); {applied} instance(s) trust exactly this bundle"
    if behind:
        message += f"; not yet applied by: {', '.join(behind)}"
    if unknown:
        message += f"; {unknown} unknown (no bundle on the admin page or unreachable)"
    return _check("trust bundle", WARN if behind else OK, message)


def _anchor(chain_pem: Any, roots: Sequence[x509.Certificate]) -> x509.Certificate | None:
    if not isinstance(chain_pem, str):
        return None
    try:
        chain = x509.load_pem_x509_certificates(chain_pem.encode())
    except ValueError:
        return None
    return anchor_of(chain[-1], roots) if chain else None


def svid_roots_check(
    roots: Sequence[x509.Certificate],
    signing_root: x509.Certificate,
    identities: Sequence[tuple[str, Any]],
) -> dict[str, str]:
    """Which root each instance's current SVID chains to (the ``certificateChain`` of
    its ``/debug/identity``): after a signing switch, wait until none is left under the
    old root before retiring it. An SVID under no root of the bundle fails: peers refuse it.
    """
    names = {root: describe(root) for root in roots}
    counts: dict[str, int] = {}
    others: list[str] = []
    orphans: list[str] = []
    for who, identity in identities:
        if not isinstance(identity, dict):
            continue
        root = _anchor(identity.get("certificateChain"), roots)
        if root is None:
            orphans.append(who)
            continue
        counts[names[root]] = counts.get(names[root], 0) + 1
        if root != signing_root:
            others.append(who)
    parts = [f"{count} under {name}" for name, count in sorted(counts.items())]
    message = "; ".join(parts) if parts else "no instance SVID seen"
    if others:
        message += f"; not yet under the signing root: {', '.join(others)}"
    if orphans:
        message += f"; under no root of the bundle (refused by peers): {', '.join(orphans)}"
        return _check("instance SVID roots", FAIL, message)
    return _check("instance SVID roots", WARN if others else OK, message)
