from __future__ import annotations

from typing import Any

import pytest

from meshlib.policy.authz import ALLOWED_NO_POLICY, Authorizer, peer_namespace
from meshlib.policy.decode import decode_resource
from meshlib.policy.model import Resource

ORDERS = "spiffe://mesh.local/ns/default/sa/orders"
FRONTEND = "spiffe://mesh.local/ns/web/sa/frontend"
BATCH = "spiffe://mesh.local/ns/jobs/sa/batch"


def policy(name: str, spec: dict[str, Any], namespace: str = "default") -> Resource:
    return decode_resource(
        {
            "apiVersion": "meshlib.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


ALLOW_ORDERS_READS = policy(
    "inventory-allow",
    {
        "service": "inventory",
        "rules": [
            {
                "name": "orders-reads",
                "from": {"principals": [ORDERS]},
                "to": {"methods": ["GET"], "paths": ["/items/*"]},
            },
            {"name": "web-ns", "from": {"namespaces": ["web"]}, "to": {"paths": ["/public/*"]}},
            {"name": "health", "to": {"paths": ["/health"]}},
        ],
    },
)
DENY_FRONTEND_ADMIN = policy(
    "block-frontend",
    {
        "action": "DENY",
        "rules": [
            {"from": {"principals": ["spiffe://mesh.local/ns/web/*"]}, "to": {"paths": ["/admin*"]}}
        ],
    },
)
ALLOW_NOTHING = policy("allow-nothing", {"service": "inventory", "rules": []})


def authorizer(*policies: Resource) -> Authorizer:
    return Authorizer(policies, service="inventory", namespace="default")


IMPLICIT = "(no ALLOW rule matched)"  # the rule an implicit deny names


@pytest.mark.parametrize(
    ("peer", "method", "path", "allowed", "rule"),
    [
        (ORDERS, "GET", "/items/42", True, "orders-reads"),
        (ORDERS, "POST", "/items/42", False, IMPLICIT),  # method not allowed
        (ORDERS, "GET", "/orders/1", False, IMPLICIT),  # path not allowed
        (ORDERS, "GET", "/items/a/b", True, "orders-reads"),  # fnmatch '*' spans '/'
        (BATCH, "GET", "/items/42", False, IMPLICIT),  # another principal
        (FRONTEND, "GET", "/public/x", True, "web-ns"),  # namespace from the SPIFFE ID
        (BATCH, "GET", "/public/x", False, IMPLICIT),  # wrong namespace
        (None, "GET", "/public/x", False, IMPLICIT),  # plaintext never matches namespaces
        (None, "GET", "/items/42", False, IMPLICIT),  # plaintext never matches principals
        (None, "GET", "/health", True, "health"),  # rule without from: anyone
        (FRONTEND, "GET", "/admin/users", False, "rules[0]"),  # DENY wins over ALLOW
        (FRONTEND, "GET", "/health", True, "health"),
    ],
)
def test_authorization_semantics_table(
    peer: str | None, method: str, path: str, allowed: bool, rule: str | None
) -> None:
    """DENY first, then ALLOW rules; unmatched requests to a service with ALLOW policies fail."""
    verdict = authorizer(ALLOW_ORDERS_READS, DENY_FRONTEND_ADMIN).authorize(peer, method, path)
    assert verdict.allowed is allowed
    assert verdict.rule == rule


def test_deny_verdict_names_policy_and_rule() -> None:
    """A DENY verdict names the policy as namespace/name and the rule."""
    verdict = authorizer(DENY_FRONTEND_ADMIN).authorize(FRONTEND, "GET", "/admin")
    assert not verdict.allowed
    assert verdict.policy == "default/block-frontend"
    assert verdict.reason == "denied by DENY rule default/block-frontend rules[0]"


def test_only_deny_policies_allow_everything_else() -> None:
    """Without any ALLOW policy, a request no DENY rule matches is allowed."""
    verdict = authorizer(DENY_FRONTEND_ADMIN).authorize(BATCH, "DELETE", "/anything")
    assert verdict.allowed
    assert verdict.policy is None


def test_no_policies_allow_through_the_fast_path() -> None:
    """With no policy at all, the preallocated allow verdict is returned."""
    assert authorizer().authorize(None, "GET", "/") is ALLOWED_NO_POLICY


def test_allow_policy_without_rules_denies_everything() -> None:
    """An ALLOW policy with rules: [] allows nothing (Istio's allow-nothing)."""
    verdict = authorizer(ALLOW_NOTHING).authorize(ORDERS, "GET", "/items/1")
    assert not verdict.allowed
    assert verdict.reason == "no ALLOW rule matched (policies: default/allow-nothing)"


def test_no_match_reason_lists_allow_policies() -> None:
    """The no-match reason lists the ALLOW policies that were consulted."""
    verdict = authorizer(ALLOW_ORDERS_READS).authorize(BATCH, "GET", "/x")
    assert verdict.reason == "no ALLOW rule matched (policies: default/inventory-allow)"
    assert verdict.policy == "default/inventory-allow"
    assert verdict.rule == "(no ALLOW rule matched)"


def test_allowed_verdicts_are_preallocated() -> None:
    """Repeated allowed requests return the very same Verdict object (no allocation)."""
    authz = authorizer(ALLOW_ORDERS_READS)
    first = authz.authorize(ORDERS, "GET", "/items/1")
    assert first.allowed
    assert authz.authorize(ORDERS, "GET", "/items/2") is first


def test_policies_of_other_services_and_namespaces_are_ignored() -> None:
    """A policy selects its service (or its whole namespace) and nothing else."""
    other_service = policy("x", {"service": "billing", "rules": []})
    other_namespace = policy("y", {"rules": []}, namespace="shop")
    authz = authorizer(other_service, other_namespace)
    assert authz.policies == ()
    assert authz.authorize(None, "GET", "/").allowed


def test_namespace_wide_policy_applies_to_the_service() -> None:
    """A policy without service applies to every service of its namespace."""
    authz = authorizer(policy("ns-wide", {"rules": []}))
    assert not authz.authorize(ORDERS, "GET", "/").allowed


def test_grpc_paths_and_wildcard_principal() -> None:
    """gRPC methods match as POST /pkg.Service/Method; '*' principals need an identity."""
    authz = authorizer(
        policy(
            "grpc",
            {
                "rules": [
                    {
                        "from": {"principals": ["*"]},
                        "to": {"methods": ["POST"], "paths": ["/inv.Inventory/*"]},
                    }
                ]
            },
        )
    )
    assert authz.authorize(BATCH, "POST", "/inv.Inventory/Get").allowed
    assert not authz.authorize(None, "POST", "/inv.Inventory/Get").allowed
    assert not authz.authorize(BATCH, "POST", "/inv.Other/Get").allowed


@pytest.mark.parametrize(
    ("peer", "namespace"),
    [
        (ORDERS, "default"),
        ("spiffe://td/ns/a-b/sa/c", "a-b"),
        ("spiffe://td/ns/a", None),
        ("spiffe://td/x/a/sa/b", None),
        ("https://td/ns/a/sa/b", None),
    ],
)
def test_peer_namespace_parses_spiffe_ids(peer: str, namespace: str | None) -> None:
    """The namespace comes from spiffe://<td>/ns/<ns>/sa/<svc>; anything else has none."""
    assert peer_namespace(peer) == namespace
