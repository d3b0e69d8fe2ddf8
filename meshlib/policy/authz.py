"""Authorization: compile AuthorizationPolicies once, then answer requests cheaply.

Semantics (those of Istio):

1. Any matching rule of a DENY policy denies.
2. Otherwise, if at least one ALLOW policy applies, the request is allowed only when some
   ALLOW rule matches (an ALLOW policy with ``rules: []`` therefore allows nothing).
3. With no ALLOW policy, the request is allowed.

A rule matches when every field it gives matches. A plaintext peer (``peer=None``) never
matches a rule that lists principals or namespaces. Globs are ``fnmatch`` patterns, compiled
to one regex per field; ``*`` also matches ``/``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

from meshlib.policy.model import AuthorizationPolicySpec, AuthzRule, Resource

__all__ = ["ALLOWED_NO_POLICY", "Authorizer", "Verdict", "peer_namespace"]


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


@dataclass(frozen=True, slots=True)
class _Rule:
    principals: re.Pattern[str] | None
    namespaces: re.Pattern[str] | None
    methods: frozenset[str] | None
    paths: re.Pattern[str] | None
    verdict: Verdict  # preallocated answer when this rule decides
    needs_peer: bool  # lists principals or namespaces: a plaintext peer cannot match

    def matches(self, peer: str | None, peer_ns: str | None, method: str, path: str) -> bool:
        if self.needs_peer and peer is None:
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

    def authorize(self, peer: str | None, method: str, path: str) -> Verdict:
        """Decide whether *peer* (a SPIFFE ID, or None for plaintext) may call *method* *path*.

        For gRPC, pass ``"POST"`` and ``"/pkg.Service/Method"``.
        """
        if not self.policies:
            return ALLOWED_NO_POLICY
        peer_ns = peer_namespace(peer) if peer is not None else None
        for rule in self._deny:
            if rule.matches(peer, peer_ns, method, path):
                return rule.verdict
        if not self._has_allow:
            return _ALLOWED_NO_ALLOW_POLICY
        for rule in self._allow:
            if rule.matches(peer, peer_ns, method, path):
                return rule.verdict
        return self._no_match
