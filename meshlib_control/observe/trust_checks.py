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

__all__ = ["INTERMEDIATE_WARN", "bundle_check", "signing_checks"]

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
