"""``meshctl check`` and ``meshctl explain``: health of the mesh as the control sees it.

Checks, in the spirit of ``linkerd check``: the control service answers; each CA root's
validity (warning 90 days ahead); instance certificates close to expiry (under 10 % of
their lifetime or an hour left); instances on a rejected snapshot (fail, with the reason)
or on a stale one for more than 30 s (warn). Every check has a status ``ok``, ``warn`` or
``fail`` and a one-line message.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from cryptography import x509
from cryptography.x509.oid import NameOID

from meshlib_control.ca.authority import CertificateAuthority
from meshlib_control.errors import ApiError
from meshlib_control.observe.instances import InstanceState, PlaneView, expected_versions
from meshlib_control.observe.scraper import Observer
from meshlib_control.observe.trust_checks import bundle_check, signing_checks, svid_roots_check
from meshlib_control.store.sqlite import InstanceRecord
from meshlib_control.xds.status import XdsStatus

__all__ = ["ROOT_WARN", "STALE_AFTER", "CheckedPlane", "explain", "run_checks"]


class CheckedPlane(PlaneView, Protocol):
    """The control plane as the checks read it (ControlPlane satisfies it)."""

    @property
    def trust_domain(self) -> str:
        """The mesh's trust domain."""
        ...

    @property
    def ca(self) -> CertificateAuthority:
        """The CA whose roots are checked."""
        ...

    @property
    def xds_status(self) -> XdsStatus:
        """What the ADS server knows of connected sidecars."""
        ...


ROOT_WARN = timedelta(days=90)
CERT_WARN_FRACTION = 0.10
CERT_WARN_MIN = timedelta(hours=1)
STALE_AFTER = 30.0

OK, WARN, FAIL = "ok", "warn", "fail"


def _check(name: str, status: str, message: str) -> dict[str, str]:
    return {"name": name, "status": status, "message": message}


def _who(record: InstanceRecord) -> str:
    return f"{record.namespace}/{record.service}/{record.id}"


def _duration(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if abs(seconds) >= 2 * 86400:
        return f"{seconds / 86400:.0f}d"
    if abs(seconds) >= 2 * 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 60:.0f}m"


def root_checks(bundle_pem: bytes, now: datetime) -> list[dict[str, str]]:
    """Validity of every root in the trust bundle."""
    out = []
    for root in x509.load_pem_x509_certificates(bundle_pem):
        names = root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        label = str(names[0].value) if names else root.subject.rfc4514_string()
        left = root.not_valid_after_utc - now
        until = root.not_valid_after_utc.date().isoformat()
        name = f"CA root {label}"
        if root.not_valid_before_utc > now:
            out.append(_check(name, FAIL, f"not valid before {root.not_valid_before_utc}"))
        elif left <= timedelta(0):
            out.append(_check(name, FAIL, f"expired on {until}: every SVID it signed is invalid"))
        elif left < ROOT_WARN:
            out.append(
                _check(name, WARN, f"expires in {left.days} days ({until}): plan a root rotation")
            )
        else:
            out.append(_check(name, OK, f"valid, expires in {left.days} days ({until})"))
    return out


def certificate_status(
    not_before: datetime | None, not_after: datetime | None, left: timedelta | None
) -> tuple[str, str]:
    """(status, message) of one instance certificate from its validity or time left."""
    if left is None and not_after is not None:
        left = not_after - datetime.now(UTC)
    if left is None:
        return OK, "expiry unknown"
    if left <= timedelta(0):
        return FAIL, f"expired {_duration(-left)} ago"
    threshold = CERT_WARN_MIN
    if not_before is not None and not_after is not None:
        threshold = max(threshold, (not_after - not_before) * CERT_WARN_FRACTION)
    if left < threshold:
        return WARN, f"expires in {_duration(left)} (renewal overdue?)"
    return OK, f"expires in {_duration(left)}"


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _state(observer: Observer, record: InstanceRecord) -> InstanceState:
    state = observer.instances.get(record.id)
    if state is None:
        state = observer.instances[record.id] = InstanceState(record)
    state.record = record
    return state


async def run_checks(plane: CheckedPlane, observer: Observer) -> list[dict[str, str]]:
    """Every check, in order; answering at all means the control service is reachable."""
    now = datetime.now(UTC)
    records = list(plane.state().instances)
    checks = [
        _check(
            "control service",
            OK,
            f"reachable; trust domain {plane.trust_domain}; {len(records)} live instance(s)",
        )
    ]
    checks.extend(root_checks(plane.ca.bundle_pem, now))
    checks.extend(signing_checks(plane.ca.chain, now))

    admin = [r for r in records if r.admin_port]
    identities, snapshots = await asyncio.gather(
        asyncio.gather(*(observer.fetch_json(r, "/debug/identity") for r in admin)),
        asyncio.gather(*(observer.fetch_json(r, "/debug/snapshot") for r in admin)),
    )
    by_id = dict(zip((r.id for r in admin), zip(identities, snapshots, strict=True), strict=True))

    cert_problems: list[dict[str, str]] = []
    cert_checked = 0
    for record in admin:
        identity, snapshot = by_id[record.id]
        state = _state(observer, record)
        if isinstance(snapshot, dict):
            state.snapshot, state.snapshot_at = snapshot, time.monotonic()
        if isinstance(identity, dict):
            status, message = certificate_status(
                _parse_time(identity.get("notBefore")), _parse_time(identity.get("notAfter")), None
            )
        else:
            seconds = state.certificate_expiry(time.monotonic())
            if seconds is None:
                continue
            status, message = certificate_status(None, None, timedelta(seconds=seconds))
        cert_checked += 1
        if status != OK:
            cert_problems.append(_check(f"certificate {_who(record)}", status, message))
    unchecked = len(records) - cert_checked
    summary = f"{cert_checked} checked, {len(cert_problems)} close to expiry or expired"
    if unchecked:
        summary += f"; {unchecked} not checked (no admin port or unreachable)"
    checks.append(_check("instance certificates", _worst(cert_problems), summary))
    checks.extend(cert_problems)
    trusting = [(_who(r), by_id[r.id][0]) for r in admin]
    checks.append(bundle_check(plane.ca.bundle_fingerprints, trusting))
    checks.append(svid_roots_check(plane.ca.bundle.roots, plane.ca.root, trusting))

    # Admin pages are the workload's word: a malformed one is reported here, never raised.
    page_problems: list[dict[str, str]] = []
    for record in admin:
        identity, snapshot = by_id[record.id]
        problems = [answer for answer in (identity, snapshot) if isinstance(answer, str)]
        if isinstance(snapshot, dict) and not isinstance(snapshot.get("snapshot"), dict):
            problems.append("/debug/snapshot: field snapshot is not a JSON object")
        page_problems.extend(
            _check(f"admin pages {_who(record)}", WARN, problem) for problem in problems
        )
    checks.append(
        _check(
            "admin pages",
            _worst(page_problems),
            f"{len(admin)} instance(s) with an admin port; {len(page_problems)} page(s) "
            "unreadable or malformed",
        )
    )
    checks.extend(page_problems)

    snap_problems: list[dict[str, str]] = []
    converging = 0
    for record in records:
        if record.rejected_version is not None:
            snap_problems.append(
                _check(
                    f"snapshot {_who(record)}",
                    FAIL,
                    f"rejected version {record.rejected_version}: {record.rejection or '?'}"
                    f" (still applying {record.applied_version or 'nothing'})",
                )
            )
            continue
        stale = observer.staleness(_state(observer, record))
        if stale is None:
            continue
        if stale > STALE_AFTER:
            snap_problems.append(
                _check(
                    f"snapshot {_who(record)}",
                    WARN,
                    f"stale for {stale:.0f}s: applied {record.applied_version}, the control "
                    f"would send {', '.join(sorted(expected_versions(plane, record, None)))}",
                )
            )
        else:
            converging += 1
    message = f"{len(records)} instance(s): {len(snap_problems)} rejected or stale"
    if converging:
        message += f", {converging} receiving an update"
    checks.append(_check("snapshots", _worst(snap_problems), message))
    checks.extend(snap_problems)

    checks.extend(sidecar_checks(plane))

    failed = [s for s in observer.instances.values() if s.error and s.record.admin_port]
    checks.append(
        _check(
            "metrics scraping",
            WARN if failed else OK,
            f"{observer.scraped} instance(s) scraped every {observer.interval:g}s"
            + (f"; failing: {', '.join(f'{_who(s.record)} ({s.error})' for s in failed)}"
               if failed else ""),
        )
    )  # fmt: skip
    return checks


def sidecar_checks(plane: CheckedPlane) -> list[dict[str, str]]:
    """Envoy sidecars: rejected (NACKed) configuration, and policy they cannot honour.

    DESIGN.md invariant 5: a field the sidecar does not apply exactly is never dropped
    silently; each one is listed here with what Envoy does instead.
    """
    nodes = plane.xds_status.connected()
    if not nodes:
        return []
    checks: list[dict[str, str]] = []
    nacks = 0
    for node in nodes:
        for kind, status in node.types.items():
            if status.rejected_version is not None and status.error:
                nacks += 1
                checks.append(
                    _check(
                        f"sidecar {node.service}/{node.node_id[:8]}",
                        FAIL,
                        f"Envoy rejected {kind} version {status.rejected_version}: "
                        f"{status.error} (still running {status.acked_version or 'nothing'})",
                    )
                )
    notes: dict[str, dict[str, str]] = {}
    for node in nodes:
        for item in node.unsupported:
            notes.setdefault(f"{node.namespace}/{node.service}", {})[item.path] = (
                f"{item.kind}: {item.reason}"
            )
    for service, fields in sorted(notes.items()):
        partial = any(not v.startswith("mapped") for v in fields.values())
        checks.append(
            _check(
                f"sidecar policy support {service}",
                WARN if partial else OK,
                "; ".join(f"{path} ({why})" for path, why in sorted(fields.items())),
            )
        )
    summary = _check(
        "sidecars",
        FAIL if nacks else OK,
        f"{len(nodes)} connected over ADS; {nacks} rejected configuration(s)",
    )
    return [summary, *checks]


def _worst(checks: list[dict[str, str]]) -> str:
    statuses = {c["status"] for c in checks}
    return FAIL if FAIL in statuses else WARN if WARN in statuses else OK


async def explain(
    plane: CheckedPlane, observer: Observer, namespace: str, service: str
) -> dict[str, Any]:
    """Per instance of *service*: applied version, its age, and the policy it applies.

    The policy comes from the instance's own ``/debug/snapshot``: its inbound policy
    (PeerAuthentication mode, AuthorizationPolicies, RateLimit) and the TrafficPolicies of
    the services it calls, as snapshot JSON.
    """
    records = [
        r for r in plane.state().instances if r.service == service and r.namespace == namespace
    ]
    if not records:
        raise ApiError(404, "not-found", f"service {namespace}/{service} has no live instances")
    answers = await asyncio.gather(*(observer.fetch_json(r, "/debug/snapshot") for r in records))
    expected = sorted(expected_versions(plane, records[0], None))
    out = []
    for record, answer in zip(records, answers, strict=True):
        item: dict[str, Any] = {
            "id": record.id,
            "mode": record.mode,
            "address": record.address,
            "port": record.port,
            "labels": dict(record.labels),
            "appliedVersion": record.applied_version,
            "rejectedVersion": record.rejected_version,
            "rejection": record.rejection,
        }
        if isinstance(answer, dict) and isinstance(answer.get("snapshot"), dict):
            # The page is the workload's word: every field is checked for its shape.
            snap = answer["snapshot"]
            ago = answer.get("appliedAgoSeconds")
            version = snap.get("version")
            services = snap.get("services")
            services = (
                [s for s in services if isinstance(s, dict)] if isinstance(services, list) else []
            )
            item["snapshotVersion"] = version if isinstance(version, str) else None
            item["appliedAgoSeconds"] = (
                round(float(ago), 1)
                if isinstance(ago, int | float) and not isinstance(ago, bool) and abs(ago) < 1e12
                else None
            )
            item["policy"] = {
                "inbound": snap.get("inbound"),
                "traffic": [
                    {
                        "service": f"{s.get('name')}.{s.get('namespace')}",
                        "trafficPolicy": s.get("trafficPolicy"),
                    }
                    for s in services
                    if s.get("trafficPolicy") is not None
                ],
                "calls": [f"{s.get('name')}.{s.get('namespace')}" for s in services],
            }
            state = _state(observer, record)
            state.snapshot, state.snapshot_at = answer, time.monotonic()
            stale = observer.staleness(state)
            item["staleForSeconds"] = None if stale is None else round(stale)
        elif isinstance(answer, dict):
            item["error"] = "/debug/snapshot: field snapshot is not a JSON object"
        else:
            item["error"] = answer
        out.append(item)
    return {
        "service": service,
        "namespace": namespace,
        "expectedVersions": expected,
        "instances": out,
    }
