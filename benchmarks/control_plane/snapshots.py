"""Snapshot size and cost against mesh size (scoped, unscoped) and one watch-cache state change."""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.control_plane.settings import CACHE_REBUILD_BUDGET, TRUST_DOMAIN, Profile
from benchmarks.control_plane.stats import median_time, ms
from meshlib.policy.decode import decode_documents
from meshlib.policy.engine import PolicyEngine
from meshlib.policy.snapshot import Snapshot, decode_snapshot, encode_snapshot
from meshlib_control.snapshot.builder import MeshState, build_snapshot
from meshlib_control.snapshot.cache import SnapshotCache
from meshlib_control.store.sqlite import InstanceRecord


def mesh_state(services: int, endpoints: int) -> MeshState:
    """A synthetic mesh: *services* services, each with *endpoints* serving instances,
    a TrafficPolicy (two subsets, two routes, retries, breaker) and an AuthorizationPolicy
    admitting three callers."""
    docs = policy_documents(services)
    instances: list[InstanceRecord] = []
    now = datetime.now(UTC)
    for i in range(services):
        name = f"svc-{i:04d}"
        for e in range(endpoints):
            instances.append(
                InstanceRecord(
                    id=f"{i:06d}{e:04d}abcdef",
                    spiffe_id=f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{name}",
                    service=name,
                    namespace="default",
                    address=f"10.{i // 250 % 250}.{i % 250}.{e + 1}",
                    port=8443,
                    plaintext_port=None,
                    admin_port=9000,
                    labels=(("version", "v1" if e else "v2"), ("zone", f"z{e % 3}")),
                    mode="library",
                    registered_at=now,
                    last_seen=now,
                    expires_at=now + timedelta(hours=1),
                )
            )
    resources = decode_documents("---\n".join(docs))
    return MeshState(TRUST_DOMAIN, resources, tuple(instances))


def policy_documents(services: int) -> list[str]:
    """A TrafficPolicy and an AuthorizationPolicy per service ``svc-NNNN``, as YAML."""
    docs: list[str] = []
    for i in range(services):
        name = f"svc-{i:04d}"
        callers = ", ".join(
            f'"spiffe://{TRUST_DOMAIN}/ns/default/sa/svc-{(i + k) % services:04d}"'
            for k in (1, 2, 3)
        )
        docs.append(
            f"""apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {{name: {name}, namespace: default}}
spec:
  service: {name}
  loadBalancer: LEAST_REQUEST
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
  routes:
  - name: canary
    match: {{headers: [{{name: x-canary, exact: "1"}}]}}
    backends: [{{subset: v2}}]
  - name: api
    match: {{path: {{prefix: /api/}}, methods: [GET, HEAD]}}
    backends: [{{subset: v1, weight: 90}}, {{subset: v2, weight: 10}}]
    timeout: 2s
    retries: {{attempts: 2, perTryTimeout: 500ms}}
  circuitBreaker: {{consecutiveFailures: 5, resetTimeout: 30s}}
---
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}-allow, namespace: default}}
spec:
  service: {name}
  rules:
  - from: {{principals: [{callers}]}}
    to: {{methods: [GET, POST], paths: ["/api/*"]}}
"""
        )
    return docs


def _body_bytes(snapshot: Snapshot) -> bytes:
    # The watch handler returns encode_snapshot(found); FastAPI renders it with
    # JSONResponse, which is json.dumps(ensure_ascii=False, separators=(",", ":")).
    return json.dumps(
        encode_snapshot(snapshot), ensure_ascii=False, allow_nan=False, separators=(",", ":")
    ).encode("utf-8")


def _api_render(snapshot: Snapshot) -> bytes:
    """What the watch handler renders: once per snapshot version, shared by its watchers."""
    from meshlib_control.snapshot.cache import render

    return render(snapshot)


def measure_snapshots(profile: Profile) -> list[dict[str, Any]]:
    """Size and cost of one caller's snapshot against mesh size, scoped and unscoped."""
    rows: list[dict[str, Any]] = []
    for size in profile.mesh_sizes:
        state = mesh_state(size, profile.endpoints_per_service)
        deps = tuple(
            f"svc-{(k + 1) % size:04d}" for k in range(min(profile.scoped_dependencies, size))
        )
        repeats = max(1, profile.size_repeats if size < 1000 else min(profile.size_repeats, 3))
        for scope, dependencies in (("unscoped", None), ("scoped", deps)):

            def build(d: tuple[str, ...] | None = dependencies, st: MeshState = state) -> Snapshot:
                # A fresh state object each time: the builder reuses its per-state index
                # (entries + digests) for every caller of one state, and this column is the
                # first caller's cost; the state-change table below shows the shared cost.
                fresh = dataclasses.replace(st)
                return build_snapshot(
                    fresh, service="svc-0000", namespace="default", dependencies=d
                )

            build_s, snap = median_time(build, repeats)
            assert isinstance(snap, Snapshot)
            encode_s, body = median_time(functools.partial(_body_bytes, snap), repeats)
            assert isinstance(body, bytes)

            def client_side(raw: bytes = body) -> PolicyEngine:
                return PolicyEngine.compile(decode_snapshot(json.loads(raw)))

            client_s, _engine = median_time(client_side, repeats)
            render_s, _rendered = median_time(functools.partial(_api_render, snap), repeats)
            rows.append(
                {
                    "services": size,
                    "endpoints": size * profile.endpoints_per_service,
                    "scope": scope if dependencies is None else f"scoped ({len(deps)} deps)",
                    "services_in_snapshot": len(snap.services),
                    "body_bytes": len(body),
                    "build_ms": ms(build_s),
                    "encode_ms": ms(encode_s),
                    "api_render_ms": ms(render_s),
                    "client_decode_compile_ms": ms(client_s),
                }
            )
        # Bound the cache measurement to about CACHE_REBUILD_BUDGET seconds of rebuilds.
        unscoped_build = rows[-2]["build_ms"] / 1000.0
        keys = max(2, min(size, profile.cache_keys_cap, int(CACHE_REBUILD_BUDGET / unscoped_build)))
        rows[-2]["cache_rebuild"] = _cache_rebuild(state, size, keys)
    return rows


def _cache_rebuild(state: MeshState, size: int, keys: int) -> dict[str, Any]:
    """Cost of one state change in the watch cache with one watch key per service.

    ``SnapshotCache.set_state`` rebuilds the snapshot of every cached key; measured with
    *keys* keys, the per-key cost gives the projection to *size* keys.
    """
    cache = SnapshotCache(state)
    for i in range(keys):
        cache.get((f"svc-{i:04d}", "default", None))
    started = time.perf_counter()
    cache.set_state(state)
    elapsed = time.perf_counter() - started
    per_key = elapsed / keys
    return {
        "keys_measured": keys,
        "set_state_ms": ms(elapsed),
        "per_key_ms": ms(per_key),
        "projected_ms_one_key_per_service": ms(per_key * size),
    }
