"""meshlib.inbound.Admission: the one pure inbound decision, and its carry-over rules."""

from __future__ import annotations

import json

from meshlib.inbound import Admission, AdmissionCache, AdmissionSource, PeerInfo, Refusal
from meshlib.policy.decode import decode_documents
from meshlib.policy.engine import PolicyEngine
from meshlib.policy.snapshot import InboundPolicy, Snapshot

ORDERS = "spiffe://mesh.local/ns/default/sa/orders"
FRONTEND = "spiffe://mesh.local/ns/default/sa/frontend"

ONLY_ORDERS = """
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {name: only-orders}
spec:
  service: inventory
  rules: [{name: orders-only, from: {principals: ["spiffe://mesh.local/ns/default/sa/orders"]}}]
"""


def rate_limit(rps: float = 1.0, burst: int = 2, per_caller: bool = False) -> str:
    caller = "true" if per_caller else "false"
    return f"""
apiVersion: meshlib.io/v1
kind: RateLimit
metadata: {{name: limit}}
spec: {{service: inventory, requestsPerSecond: {rps}, burst: {burst}, perCaller: {caller}}}
"""


def engine(
    mode: str = "STRICT", authz: str = "", limit: str = "", version: str = "v1"
) -> PolicyEngine:
    policies = decode_documents(authz) if authz else ()
    limits = decode_documents(limit) if limit else ()
    return PolicyEngine.compile(
        Snapshot(
            version,
            "mesh.local",
            "inventory",
            "default",
            InboundPolicy(mode, policies, limits[0] if limits else None),
            (),
        )
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def decide(admission: Admission, peer: str | None = ORDERS, **kw: object) -> object:
    args: dict[str, object] = {
        "secure": peer is not None,
        "peer": peer,
        "method": "GET",
        "path": "/items/1",
    }
    args.update(kw)
    return admission.decide(**args)  # type: ignore[arg-type]


def test_mtls_caller_is_admitted_with_its_identity() -> None:
    """A validated SPIFFE ID comes back as an authenticated PeerInfo of the snapshot."""
    got = decide(Admission.build(engine()))
    assert got == PeerInfo(ORDERS, True, "v1")


def test_invalid_peer_certificate_is_refused_with_the_reason() -> None:
    """A TLS caller without a valid SVID: 403 / UNAUTHENTICATED, the reason in the message."""
    got = decide(Admission.build(engine()), None, secure=True, peer_error="2 URI SANs")
    assert isinstance(got, Refusal)
    assert (got.flag, got.status, got.grpc_code) == ("INVALID_PEER_CERT", 403, "UNAUTHENTICATED")
    assert "2 URI SANs" in got.message
    missing = decide(Admission.build(engine()), None, secure=True)
    assert isinstance(missing, Refusal) and "no client certificate" in missing.message


def test_strict_refuses_plaintext() -> None:
    """STRICT: a plaintext caller gets PLAINTEXT_REFUSED, 403 / UNAUTHENTICATED."""
    got = decide(Admission.build(engine("STRICT")), None)
    assert isinstance(got, Refusal)
    assert (got.flag, got.status, got.grpc_code) == ("PLAINTEXT_REFUSED", 403, "UNAUTHENTICATED")
    assert json.loads(got.body)["mechanism"] == "PeerAuthentication"


def test_permissive_admits_plaintext_unauthenticated() -> None:
    """PERMISSIVE: plaintext is admitted with no peer; mTLS callers are still identified."""
    admission = Admission.build(engine("PERMISSIVE"))
    assert decide(admission, None) == PeerInfo(None, False, "v1")
    assert decide(admission, ORDERS) == PeerInfo(ORDERS, True, "v1")


def test_permissive_still_refuses_an_invalid_certificate() -> None:
    """PERMISSIVE admits plaintext, not a TLS caller whose certificate failed the rules."""
    got = decide(Admission.build(engine("PERMISSIVE")), None, secure=True, peer_error="cA")
    assert isinstance(got, Refusal) and got.flag == "INVALID_PEER_CERT"


def test_authorization_denial_names_policy_and_rule() -> None:
    """AUTHZ_DENIED: 403 / PERMISSION_DENIED; body and gRPC metadata name policy and rule."""
    admission = Admission.build(engine(authz=ONLY_ORDERS))
    got = decide(admission, FRONTEND)
    assert isinstance(got, Refusal)
    assert (got.flag, got.status, got.grpc_code) == ("AUTHZ_DENIED", 403, "PERMISSION_DENIED")
    assert got.policy == "default/only-orders" and got.rule == "(no ALLOW rule matched)"
    body = json.loads(got.body)
    assert body["peer"] == FRONTEND and body["policy"] == "default/only-orders"
    assert body["flag"] == "AUTHZ_DENIED" and body["mechanism"] == "AuthorizationPolicy"
    assert ("x-mesh-policy", "default/only-orders") in got.grpc_metadata
    assert ("x-mesh-flag", "AUTHZ_DENIED") in got.grpc_metadata
    assert decide(admission, ORDERS) == PeerInfo(ORDERS, True, "v1")


def test_plaintext_never_matches_a_principal_rule() -> None:
    """PERMISSIVE plaintext against a principals rule is denied by authorization."""
    got = decide(Admission.build(engine("PERMISSIVE", ONLY_ORDERS)), None)
    assert isinstance(got, Refusal) and got.flag == "AUTHZ_DENIED" and got.peer is None


def test_rate_limit_refuses_with_retry_after() -> None:
    """An empty bucket: 429 / RESOURCE_EXHAUSTED with Retry-After and retry-after-ms."""
    clock = Clock()
    admission = Admission.build(engine(limit=rate_limit(0.5, 2)), clock=clock)
    assert isinstance(decide(admission), PeerInfo)
    assert isinstance(decide(admission), PeerInfo)
    got = decide(admission)
    assert isinstance(got, Refusal)
    assert (got.flag, got.status, got.grpc_code) == ("RATE_LIMITED", 429, "RESOURCE_EXHAUSTED")
    assert got.retry_after == 2.0
    assert got.http_headers == ((b"retry-after", b"2"),)
    assert ("retry-after-ms", "2000") in got.grpc_metadata
    assert json.loads(got.body)["retryAfter"] == 2
    clock.now += 2.0  # one token refilled
    assert isinstance(decide(admission), PeerInfo)


def test_refused_before_rate_limited_spends_no_token() -> None:
    """Authorization runs before the rate limit: denied callers do not drain the bucket."""
    clock = Clock()
    admission = Admission.build(engine(authz=ONLY_ORDERS, limit=rate_limit(1, 1)), clock=clock)
    for _ in range(3):
        got = decide(admission, FRONTEND)
        assert isinstance(got, Refusal) and got.flag == "AUTHZ_DENIED"
    assert isinstance(decide(admission, ORDERS), PeerInfo)


def test_per_caller_rate_limit_keeps_callers_apart() -> None:
    """perCaller: one caller's empty bucket does not refuse another caller."""
    clock = Clock()
    admission = Admission.build(engine(limit=rate_limit(1, 1, per_caller=True)), clock=clock)
    assert isinstance(decide(admission, ORDERS), PeerInfo)
    assert isinstance(decide(admission, ORDERS), Refusal)
    assert isinstance(decide(admission, FRONTEND), PeerInfo)


def test_unchanged_rate_limit_carries_its_bucket_over() -> None:
    """A new snapshot with an equal RateLimit keeps the drained bucket (no refill)."""
    clock = Clock()
    first = Admission.build(engine(limit=rate_limit(1, 1)), clock=clock)
    assert isinstance(decide(first), PeerInfo)
    second = Admission.build(engine(limit=rate_limit(1, 1), version="v2"), first, clock=clock)
    assert second.limiter is first.limiter
    got = decide(second)
    assert isinstance(got, Refusal) and got.flag == "RATE_LIMITED"


def test_changed_rate_limit_starts_a_fresh_bucket() -> None:
    """A changed RateLimit gets a new, full bucket; a removed one admits everything."""
    clock = Clock()
    first = Admission.build(engine(limit=rate_limit(1, 1)), clock=clock)
    assert isinstance(decide(first), PeerInfo)
    changed = Admission.build(engine(limit=rate_limit(1, 3), version="v2"), first, clock=clock)
    assert changed.limiter is not first.limiter
    assert all(isinstance(decide(changed), PeerInfo) for _ in range(3))
    assert isinstance(decide(changed), Refusal)
    removed = Admission.build(engine(version="v3"), changed, clock=clock)
    assert removed.limiter is None
    assert all(isinstance(decide(removed), PeerInfo) for _ in range(5))


def test_expired_deadline_is_refused() -> None:
    """A deadline already passed on arrival: 504 / DEADLINE_EXCEEDED."""
    clock = Clock()
    admission = Admission.build(engine(), clock=clock)
    got = decide(admission, deadline=clock.now)
    assert isinstance(got, Refusal)
    assert (got.flag, got.status, got.grpc_code) == ("DEADLINE_EXCEEDED", 504, "DEADLINE_EXCEEDED")


def test_live_deadline_reaches_the_peer_info() -> None:
    """A deadline still ahead is admitted and carried in the PeerInfo."""
    clock = Clock()
    got = decide(Admission.build(engine(), clock=clock), deadline=clock.now + 1.5)
    assert got == PeerInfo(ORDERS, True, "v1", clock.now + 1.5)


def test_order_identity_before_authorization_before_rate_limit() -> None:
    """The first failing check decides: an invalid cert is reported, not the authz denial."""
    admission = Admission.build(engine(authz=ONLY_ORDERS, limit=rate_limit(1, 1)))
    got = decide(admission, None, secure=True, peer_error="bad")
    assert isinstance(got, Refusal) and got.flag == "INVALID_PEER_CERT"


def test_cache_rebuilds_only_for_a_new_engine() -> None:
    """AdmissionCache returns the same object for the same engine and carries the bucket."""
    cache = AdmissionCache()
    first_engine = engine(limit=rate_limit(1, 1))
    first = cache.get(first_engine)
    assert cache.get(first_engine) is first
    second = cache.get(engine(limit=rate_limit(1, 1), version="v2"))
    assert second is not first and second.limiter is first.limiter


def test_source_prefers_the_admission_built_at_install() -> None:
    """AdmissionSource returns view.inbound when the mesh publishes one."""
    built = Admission.build(engine())

    class View:
        inbound = built

    class MeshWithView:
        view = View()

        @property
        def engine(self) -> PolicyEngine:
            raise AssertionError("the view's admission needs no engine lookup")

    assert AdmissionSource(MeshWithView()).get() is built


def test_source_shares_one_admission_per_mesh() -> None:
    """Two adapters (HTTP and gRPC) of one mesh spend from the same limiter."""

    class Holder:
        def __init__(self) -> None:
            self.engine = engine(limit=rate_limit(1, 1))

    mesh = Holder()
    http, grpc = AdmissionSource(mesh), AdmissionSource(mesh)
    assert http.get() is grpc.get()
    assert isinstance(decide(http.get()), PeerInfo)
    assert isinstance(decide(grpc.get()), Refusal)
