"""Authorization: compile AuthorizationPolicies once, then answer requests cheaply.

Semantics (those of Istio):

1. Any matching rule of a DENY policy denies.
2. Otherwise, if at least one ALLOW policy applies, the request is allowed only when some
   ALLOW rule matches (an ALLOW policy with ``rules: []`` therefore allows nothing).
3. With no ALLOW policy, the request is allowed.

A rule matches when every field it gives matches. A plaintext peer (``peer=None``) never
matches a rule that lists principals or namespaces. Globs are ``fnmatch`` patterns, compiled
to one regex per field; ``*`` also matches ``/``.

End-user fields (those of Istio, read from the JWT verified by RequestAuthentication):
``requestPrincipals`` matches ``<iss>/<sub>`` of the verified token (a request without one
never matches it); ``notRequestPrincipals`` matches when there is no verified principal or
it matches none of the globs. A ``when`` condition reads one attribute — the principal,
the audiences (``aud``), the presenter (``azp``) or a claim, nested by ``[a][b]`` — as a
list of strings (a string claim is a list of one; claims of other types give none):
``values`` needs one element to match, ``notValues`` needs none to.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshlib.policy.model import AuthorizationPolicySpec, AuthzCondition, AuthzRule, Resource

__all__ = ["ALLOWED_NO_POLICY", "Authorizer", "Verdict", "claim_strings", "peer_namespace"]


IMPLICIT_DENY_RULE = "(no ALLOW rule matched)"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to one request: allowed or not, which policy and rule decided, and why."""

    allowed: bool
    policy: str | None  # "<namespace>/<name>"
    rule: str | None
    reason: str


ALLOWED_NO_POLICY = Verdict(True, None, None, "no authorization policy applies")
_ALLOWED_NO_ALLOW_POLICY = Verdict(True, None, None, "no DENY rule matched and no ALLOW policy")


@functools.lru_cache(maxsize=4096)  # a workload sees few distinct callers; a hit costs no parse
def peer_namespace(peer: str) -> str | None:
    """The namespace in a SPIFFE ID ``spiffe://<td>/ns/<ns>/sa/<svc>``, or None."""
    parts = peer.split("/")
    if len(parts) == 7 and parts[0] == "spiffe:" and parts[3] == "ns" and parts[5] == "sa":
        return parts[4]
    return None


def _globs(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def claim_strings(
    claims: Mapping[str, Any] | None, path: tuple[str, ...] | None, principal: str | None
) -> tuple[str, ...]:
    """The strings a ``when`` attribute holds: *principal* for path None, else the claim."""
    if path is None:
        return () if principal is None else (principal,)
    value: Any = claims
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return ()
        value = value[part]
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


@dataclass(frozen=True, slots=True)
class _Condition:
    claim: tuple[str, ...] | None
    values: re.Pattern[str] | None
    not_values: re.Pattern[str] | None

    def holds(self, principal: str | None, claims: Mapping[str, Any] | None) -> bool:
        found = claim_strings(claims, self.claim, principal)
        if self.values is not None and not any(self.values.match(v) for v in found):
            return False
        return self.not_values is None or not any(self.not_values.match(v) for v in found)


def _condition(c: AuthzCondition) -> _Condition:
    return _Condition(c.claim, _globs(c.values), _globs(c.not_values))


@dataclass(frozen=True, slots=True)
class _Rule:
    principals: re.Pattern[str] | None
    namespaces: re.Pattern[str] | None
    methods: frozenset[str] | None
    paths: re.Pattern[str] | None
    verdict: Verdict  # preallocated answer when this rule decides
    needs_peer: bool  # lists principals or namespaces: a plaintext peer cannot match
    request_principals: re.Pattern[str] | None = None
    not_request_principals: re.Pattern[str] | None = None
    when: tuple[_Condition, ...] = ()
    end_user: bool = False  # has a field read from the verified JWT

    def matches(
        self,
        peer: str | None,
        peer_ns: str | None,
        method: str,
        path: str,
        principal: str | None = None,
        claims: Mapping[str, Any] | None = None,
    ) -> bool:
        if self.needs_peer and peer is None:
            return False
        if self.end_user and not self._end_user_matches(principal, claims):
            return False
        if self.principals is not None and self.principals.match(peer or "") is None:
            return False
        if self.namespaces is not None and (
            peer_ns is None or self.namespaces.match(peer_ns) is None
        ):
            return False
        if self.methods is not None and method not in self.methods:
            return False
        return self.paths is None or self.paths.match(path) is not None

    def _end_user_matches(self, principal: str | None, claims: Mapping[str, Any] | None) -> bool:
        if self.request_principals is not None and (
            principal is None or self.request_principals.match(principal) is None
        ):
            return False
        if (
            self.not_request_principals is not None
            and principal is not None
            and self.not_request_principals.match(principal) is not None
        ):
            return False
        return all(c.holds(principal, claims) for c in self.when)


def _compile_rule(policy_id: str, spec: AuthorizationPolicySpec, rule: AuthzRule) -> _Rule:
    if spec.action == "DENY":
        verdict = Verdict(
            False, policy_id, rule.name, f"denied by DENY rule {policy_id} {rule.name}"
        )
    else:
        verdict = Verdict(
            True, policy_id, rule.name, f"allowed by ALLOW rule {policy_id} {rule.name}"
        )
    return _Rule(
        principals=_globs(rule.principals),
        namespaces=_globs(rule.namespaces),
        methods=frozenset(rule.methods) if rule.methods else None,
        paths=_globs(rule.paths),
        verdict=verdict,
        needs_peer=bool(rule.principals or rule.namespaces),
        request_principals=_globs(rule.request_principals),
        not_request_principals=_globs(rule.not_request_principals),
        when=tuple(_condition(c) for c in rule.when),
        end_user=bool(rule.request_principals or rule.not_request_principals or rule.when),
    )


class Authorizer:
    """The compiled AuthorizationPolicies that apply to one service. Immutable."""

    __slots__ = ("_allow", "_deny", "_has_allow", "_no_match", "policies")

    def __init__(self, policies: Iterable[Resource], *, service: str, namespace: str) -> None:
        """Compile the policies of *namespace* that select *service* (others are skipped).

        Args:
            policies: AuthorizationPolicy resources (other kinds are ignored).
            service: the protected service.
            namespace: its namespace.
        """
        selected: list[tuple[str, AuthorizationPolicySpec]] = []
        for res in policies:
            spec = res.spec
            if not isinstance(spec, AuthorizationPolicySpec):
                continue
            if res.metadata.namespace != namespace or spec.service not in (None, service):
                continue
            selected.append((f"{res.metadata.namespace}/{res.metadata.name}", spec))
        selected.sort(key=lambda item: item[0])  # deterministic: reasons name the same rule
        self.policies: tuple[str, ...] = tuple(pid for pid, _ in selected)
        self._deny = tuple(
            _compile_rule(pid, spec, r)
            for pid, spec in selected
            if spec.action == "DENY"
            for r in spec.rules
        )
        self._allow = tuple(
            _compile_rule(pid, spec, r)
            for pid, spec in selected
            if spec.action == "ALLOW"
            for r in spec.rules
        )
        allow_ids = [pid for pid, spec in selected if spec.action == "ALLOW"]
        self._has_allow = bool(allow_ids)
        # The implicit deny names every ALLOW policy consulted, and a rule of its own, so a
        # 403 always says which policy refused the request.
        self._no_match = Verdict(
            False,
            ", ".join(allow_ids),
            IMPLICIT_DENY_RULE,
            f"no ALLOW rule matched (policies: {', '.join(allow_ids)})",
        )

    def authorize(
        self,
        peer: str | None,
        method: str,
        path: str,
        principal: str | None = None,
        claims: Mapping[str, Any] | None = None,
    ) -> Verdict:
        """Decide whether *peer* (a SPIFFE ID, or None for plaintext) may call *method* *path*.

        For gRPC, pass ``"POST"`` and ``"/pkg.Service/Method"``. *principal* (``<iss>/<sub>``)
        and *claims* are those of the request's verified JWT, if any.
        """
        if not self.policies:
            return ALLOWED_NO_POLICY
        peer_ns = peer_namespace(peer) if peer is not None else None
        for rule in self._deny:
            if rule.matches(peer, peer_ns, method, path, principal, claims):
                return rule.verdict
        if not self._has_allow:
            return _ALLOWED_NO_ALLOW_POLICY
        for rule in self._allow:
            if rule.matches(peer, peer_ns, method, path, principal, claims):
                return rule.verdict
        return self._no_match
