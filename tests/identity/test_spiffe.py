"""SPIFFE ID parsing, validation and the workload form."""

from __future__ import annotations

import pytest

from meshlib.errors import IdentityError
from meshlib.identity.spiffe import SpiffeId, trust_domain_id


def test_parse_workload_id() -> None:
    """A workload URI parses into trust domain, path, namespace and service."""
    sid = SpiffeId.parse("spiffe://example.org/ns/default/sa/orders")
    assert sid.trust_domain == "example.org"
    assert sid.path == "/ns/default/sa/orders"
    assert sid.namespace == "default"
    assert sid.service == "orders"
    assert sid.is_workload
    assert str(sid) == "spiffe://example.org/ns/default/sa/orders"


def test_parse_root_id() -> None:
    """The trust domain's own ID parses, with an empty path, and is not a workload."""
    sid = SpiffeId.parse("spiffe://example.org")
    assert sid.path == ""
    assert not sid.is_workload
    assert sid.namespace is None and sid.service is None and sid.dns_name is None
    assert str(sid) == "spiffe://example.org"


def test_non_workload_path() -> None:
    """A non-root path outside the /ns/X/sa/Y form has no namespace, service or DNS name."""
    sid = SpiffeId.parse("spiffe://example.org/control")
    assert not sid.is_workload
    assert sid.namespace is None and sid.service is None and sid.dns_name is None


def test_for_service_and_dns_name() -> None:
    """for_service builds the workload URI and its <svc>.<ns>.svc.<td> DNS name."""
    sid = SpiffeId.for_service("mesh.local", "shop", "orders")
    assert str(sid) == "spiffe://mesh.local/ns/shop/sa/orders"
    assert sid.dns_name == "orders.shop.svc.mesh.local"
    assert SpiffeId.parse(str(sid)) == sid


@pytest.mark.parametrize(
    ("namespace", "service"),
    [("Shop", "orders"), ("shop", "orders_v2"), ("shop", ""), ("-x", "orders"), ("a" * 64, "b")],
)
def test_for_service_refuses_non_dns_labels(namespace: str, service: str) -> None:
    """for_service refuses namespaces and services that are not DNS labels."""
    with pytest.raises(IdentityError, match="must be a DNS label"):
        SpiffeId.for_service("mesh.local", namespace, service)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("https://example.org/ns/a/sa/b", "scheme"),
        ("SPIFFE://example.org/x", "scheme"),
        ("spiffe://", "trust domain is empty"),
        ("spiffe:///ns/a/sa/b", "trust domain is empty"),
        ("spiffe://Example.org/x", "lower-case"),
        ("spiffe://example.org:8443/x", "lower-case"),
        ("spiffe://user@example.org/x", "lower-case"),
        ("spiffe://example.org/", "empty segment"),
        ("spiffe://example.org/a//b", "empty segment"),
        ("spiffe://example.org/a/../b", "'.' and '..'"),
        ("spiffe://example.org/a/b c", "may only hold"),
        ("spiffe://example.org/a?x=1", "query or fragment"),
        ("spiffe://example.org/a#frag", "query or fragment"),
        ("spiffe://example.org/" + "a" * 2100, "longer than"),
    ],
)
def test_parse_refuses_invalid_ids(text: str, reason: str) -> None:
    """Invalid SPIFFE IDs raise IdentityError stating the reason."""
    with pytest.raises(IdentityError, match=reason):
        SpiffeId.parse(text)


def test_direct_construction_is_validated() -> None:
    """Building a SpiffeId directly runs the same validation as parse."""
    with pytest.raises(IdentityError, match="must start with '/'"):
        SpiffeId("example.org", "ns/a")


def test_trust_domain_id() -> None:
    """trust_domain_id gives spiffe://<td> and refuses an invalid trust domain."""
    assert trust_domain_id("example.org") == "spiffe://example.org"
    assert SpiffeId.parse("spiffe://example.org/x").trust_domain_id == "spiffe://example.org"
    with pytest.raises(IdentityError):
        trust_domain_id("Bad Domain")


def test_ids_are_hashable_values() -> None:
    """Equal IDs compare and hash equal, so they can key dicts and sets."""
    a = SpiffeId.parse("spiffe://td/ns/a/sa/b")
    b = SpiffeId.for_service("td", "a", "b")
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
