"""Where the observer may scrape an instance: fixed admin paths at the instance's own address.

A workload chooses what it registers, so nothing of it is trusted: the admin host must be an
IP address (no DNS) and the address the registration came from, or loopback for a
registration from loopback (module docstring of :mod:`meshlib_control.observe.scraper`).
"""

from __future__ import annotations

import ipaddress

from meshlib_control.store.sqlite import InstanceRecord

__all__ = ["ADMIN_PATHS", "admin_base", "admin_refusal"]

ADMIN_PATHS = frozenset({"/metrics", "/debug/snapshot", "/debug/identity"})


def admin_base(record: InstanceRecord) -> str | None:
    """``http://host:adminPort`` of *record*, or None without an admin port."""
    if not record.admin_port:
        return None
    host = record.address or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{record.admin_port}"


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return ipaddress.ip_address("127.0.0.1") if text == "localhost" else None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def admin_refusal(record: InstanceRecord) -> str | None:
    """Why the observer will not GET *record*'s admin port, or None when it may.

    The rule: the admin host (the registered address, 127.0.0.1 when none) must be an IP
    address, and the address the registration came from (or, for a registration from
    loopback, any loopback address). A registration of unknown origin (made before the
    control service recorded it) is scraped only on loopback.
    """
    host = record.address or "127.0.0.1"
    admin = _ip(host)
    if admin is None:
        return f"admin address {host!r} is not an IP address (the observer resolves no names)"
    source = _ip(record.source) if record.source else None
    if source is None:
        if admin.is_loopback:
            return None
        return f"admin address {host} is not loopback and the registration's origin is unknown"
    if admin == source or (admin.is_loopback and source.is_loopback):
        return None
    return (
        f"admin address {host} is not the address instance {record.id} registered from "
        f"({record.source}); not scraped"
    )
