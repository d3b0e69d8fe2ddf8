"""Property-based fuzzing of the policy and snapshot decoders (bounded, reproducible).

Any document gives a decoded resource or a :class:`PolicyError` naming a field, never another
exception; whatever decodes also encodes, decodes back equal, and builds every runtime object
of the data plane. Examples are derandomized and no example database is kept, so CI runs the
same examples every time.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshlib.errors import PolicyError
from meshlib.policy import model as m
from meshlib.policy.decode import decode_documents, decode_resource, encode_resource
from meshlib.policy.engine import PolicyEngine
from meshlib.policy.snapshot import Snapshot, decode_snapshot, encode_snapshot
from meshlib.resilience.breaker import BreakerRegistry
from meshlib.resilience.budget import RetryBudget
from meshlib.resilience.deadline import effective_deadline
from meshlib.resilience.fault import decide_fault
from meshlib.resilience.outlier import OutlierDetector
from meshlib.resilience.ratelimit import RateLimiter
from tests.policy.test_policy_ranges import _snapshot_with, rate_limit, traffic

FUZZ = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

FIELD_NAMES = [
    "apiVersion", "kind", "metadata", "spec", "name", "namespace", "service", "routes",
    "subsets", "labels", "match", "path", "regex", "exact", "prefix", "headers", "present",
    "methods", "backends", "subset", "weight", "timeout", "retries", "attempts", "burst",
    "perTryTimeout", "retryOn", "fault", "delay", "abort", "percent", "mirror", "rules",
    "requestsPerSecond", "perCaller", "mode", "action", "from", "to", "principals", "paths",
]  # fmt: skip
HOSTILE = [10**400, -(10**400), 10**5000, 2**53 + 1, math.inf, -math.inf, math.nan, 1e308]
HOSTILE_TEXT = [
    "1e400s", "9" * 70 + "h", "99999999999h", "a{99999999999}", "(a+)+$", "(?P<x>a)(?P=x)",
    "[", "\x00", "spiffe://", "*", "/", "ROUND_ROBIN", "meshlib.io/v1", "RateLimit",
]  # fmt: skip


def _hostile(i: int) -> Any:
    # A function, not HOSTILE itself, in the strategy: hypothesis reprs strategies and the
    # repr of 10**5000 raises ValueError.
    return HOSTILE[i]


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(0, len(HOSTILE) - 1).map(_hostile)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(HOSTILE_TEXT + FIELD_NAMES)
)
keys = st.sampled_from(FIELD_NAMES) | st.text(max_size=8) | st.integers() | st.none()
trees = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(keys, kids, max_size=4),
    max_leaves=25,
)


def _authz() -> dict[str, Any]:
    return {
        "apiVersion": "meshlib.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "a"},
        "spec": {
            "service": "orders",
            "action": "DENY",
            "rules": [
                {
                    "from": {"principals": ["spiffe://x/*"], "namespaces": ["d?"]},
                    "to": {"methods": ["GET"], "paths": ["/a*"]},
                }
            ],
        },
    }


def _peer() -> dict[str, Any]:
    return {
        "apiVersion": "meshlib.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "p"},
        "spec": {"mode": "STRICT"},
    }


def _request_auth() -> dict[str, Any]:
    key = {
        "kty": "EC",
        "crv": "P-256",
        "kid": "p1",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
    }
    return {
        "apiVersion": "meshlib.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": "j"},
        "spec": {
            "service": "orders",
            "jwtRules": [
                {
                    "issuer": "https://i",
                    "audiences": ["a"],
                    "jwks": {"keys": [key]},
                    "fromHeaders": [{"name": "x-t", "prefix": "B "}],
                    "outputClaimToHeaders": [{"header": "x-u", "claim": "sub"}],
                    "clockSkew": "5s",
                },
                {"issuer": "p", "jwksUri": "https://i/jwks", "fromParams": ["t"]},
            ],
        },
    }


def _end_user_authz() -> dict[str, Any]:
    doc = _authz()
    doc["spec"]["rules"][0]["from"] = {
        "requestPrincipals": ["https://i/*"],
        "notRequestPrincipals": ["*/x"],
    }
    doc["spec"]["rules"][0]["when"] = [
        {"key": "request.auth.claims[g][h]", "values": ["a*"], "notValues": ["b"]}
    ]
    return doc


VALID = [traffic(), rate_limit(), _authz(), _peer(), _request_auth(), _end_user_authz()]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, base: list[dict[str, Any]]) -> Any:
    """A valid document with one to three of its nodes replaced, removed or added to."""
    doc: Any = copy.deepcopy(draw(st.sampled_from(base)))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        if not path:
            continue
        parent: Any = doc
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(trees)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(keys)] = draw(trees)
        else:
            parent.append(draw(trees))
    return doc


def build_runtime(snapshot: Snapshot) -> None:
    """Build what the library builds from an accepted snapshot, and use each object once."""
    engine = PolicyEngine.compile(snapshot)
    engine.authorize("spiffe://mesh.local/ns/default/sa/x", "GET", "/a")
    engine.authorize(None, "POST", "/")
    rate = snapshot.inbound.rate_limit
    if rate is not None:
        assert isinstance(rate.spec, m.RateLimitSpec)
        RateLimiter(rate.spec).check("spiffe://mesh.local/ns/default/sa/x")
    for service in engine.services:
        budget = RetryBudget.from_policy(service.retry_budget)
        budget.record_request()
        budget.try_spend()
        OutlierDetector(service.outlier_detection)
        BreakerRegistry(service.circuit_breaker).allow("10.0.0.1:1")
        for plan in (*service.plans, service.default_plan):
            plan.pick_backend(0.999999)
            decision = decide_fault(plan.fault, rand=lambda: 0.0)
            assert math.isfinite(decision.delay)
            effective_deadline(plan.timeout, 0.0, None)
        service.route("GET", "/items/1?q", {"x-v": "v1"})


def _check_resource(doc: Any) -> None:
    try:
        res = decode_resource(doc)
    except PolicyError as exc:
        assert str(exc)
        return
    encoded = encode_resource(res)
    assert decode_resource(encoded) == res
    assert decode_documents(yaml.safe_dump(encoded)) == (res,)


def _dump(doc: Any) -> str:
    try:
        return yaml.safe_dump(doc, width=10_000)
    except ValueError:  # yaml cannot write an integer of more than 4300 digits either
        return "spec: {burst: " + "9" * 5000 + "}"


@FUZZ
@given(trees)
def test_any_tree_decodes_or_names_a_field(doc: Any) -> None:
    """An arbitrary JSON-like tree is a resource or a PolicyError, never another exception."""
    _check_resource(doc)


@FUZZ
@given(st.dictionaries(st.sampled_from(FIELD_NAMES), trees, max_size=5))
def test_any_mapping_of_known_fields_decodes_or_names_a_field(doc: dict[str, Any]) -> None:
    """Mappings with the real field names at the top reach deeper into the decoder."""
    _check_resource({"apiVersion": "meshlib.io/v1", "metadata": {"name": "a"}, **doc})


@FUZZ
@given(mutated(VALID))
def test_mutated_valid_documents_decode_or_name_a_field(doc: Any) -> None:
    """Valid documents of each kind with nodes replaced, removed or added: same property."""
    _check_resource(doc)


@FUZZ
@given(st.text(max_size=200) | mutated(VALID).map(_dump))
def test_any_text_loads_or_names_a_document(text: str) -> None:
    """YAML/JSON text of any shape: resources or a PolicyError (documents[i]...)."""
    try:
        decode_documents(text)
    except PolicyError as exc:
        assert exc.path.startswith("documents[")


SNAPSHOT = _snapshot_with(rate_limit(), encode_resource(decode_resource(traffic())))
AUTHZ_SNAPSHOT = copy.deepcopy(SNAPSHOT)
AUTHZ_SNAPSHOT["inbound"]["authorization"] = [encode_resource(decode_resource(_authz()))]


@FUZZ
@given(mutated([SNAPSHOT, AUTHZ_SNAPSHOT]))
def test_mutated_snapshots_are_rejected_whole_or_build_the_data_plane(body: Any) -> None:
    """The library's snapshot decoder: a PolicyError, or a snapshot every runtime object builds
    from (invariant 3: what is accepted cannot fail later)."""
    try:
        snapshot = decode_snapshot(body)
    except PolicyError as exc:
        assert str(exc)
        return
    assert decode_snapshot(encode_snapshot(snapshot)) == snapshot
    build_runtime(snapshot)


@FUZZ
@given(trees)
def test_any_tree_as_a_snapshot_is_a_policy_error(body: Any) -> None:
    """Arbitrary trees are never snapshots; the decoder says so with PolicyError only."""
    try:
        decode_snapshot(body)
    except PolicyError:
        return
    raise AssertionError("an arbitrary tree decoded as a snapshot")
