"""The control-plane results as Markdown and as a PNG plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks import document
from benchmarks.control_plane.settings import HEARTBEAT_INTERVAL, TARGET_P99_SECONDS


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 10 else f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render_markdown(result: dict[str, Any]) -> str:
    """The results as Markdown, readable on its own (docs/benchmarks.md includes it)."""
    lines = [
        "# Control-plane benchmarks",
        "",
        document.measured_line(result, command="python -m benchmarks.control_plane"),
        "",
        "## Propagation: `apply` → every watcher has the new snapshot",
        "",
        "A real `meshctl control serve` process on 127.0.0.1; N simulated instances in **one** "
        "separate Python process (asyncio), each with its own HTTPS connection(s) and its "
        "own parked `GET /v1/snapshot` long-poll over mTLS; the instances share a few SVIDs "
        "(one per simulated service, issued through real join tokens). Each round applies a "
        "TrafficPolicy through the admin API that `meshctl apply` calls; it changes every "
        "watcher's snapshot. Per watcher and round: time from just before the apply call to "
        "the new snapshot *received* (body read and parsed) and to it *compiled*. "
        "Percentiles are over all watchers x rounds. Two client modes:",
        "",
        "- **agent**: each instance is the library's own `ControlClient` (httpx), registers, "
        "and, as the agent does, decodes and compiles every snapshot (`decode_snapshot` + "
        "`PolicyEngine.compile`) and reports the applied version. Writing `snapshot.json` is "
        "not simulated, nor are heartbeats (unless `--heartbeats`; see below);",
        "- **light**: each instance is a minimal HTTP/1.1 client on one mTLS connection "
        "(same request, SVID and SPIFFE check of the control service, no httpx, no decoding, "
        "no registration or report). It spends little client CPU per watcher, so its "
        "figures are closer to the control service's own fan-out time.",
        "",
        "*Mesh services* is how many services each watcher's (unscoped) snapshot lists: 1 "
        "(only the service the rounds change), or that one plus a TrafficPolicy and an "
        "AuthorizationPolicy for each of N-1 more services applied before the watchers "
        "start, so every response carries a bigger snapshot.",
        "",
        "Target (issue 7): p99 ≤ 1 s to 1,000 watching instances. CPU per round is measured "
        "over the rounds and the pauses between them, for the control-service process and "
        "for the one client process.",
        "",
        "| client | mesh services | watchers | rounds | delivered | receive p50 | p90 | p99 "
        "| max | compiled p99 | apply call | CPU / round: control, client | p99 ≤ 1 s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:--|",
    ]
    for p in result["propagation"]:
        rec, comp = p["receive_ms"], p["compiled_ms"]
        apply_ms = statistics.median(
            r["apply_call_ms"] for r in p["per_round"] if r["via"] == "admin API"
        )
        cpu = p["control_cpu_seconds_during_rounds"]
        all_rounds = max(len(p["per_round"]), 1)
        control_cpu = None if cpu is None else cpu / all_rounds
        client_cpu = p["client_cpu_seconds_during_rounds"] / all_rounds
        meets = "yes" if comp.get("p99", 1e9) <= TARGET_P99_SECONDS * 1000 else "**no**"
        # The light client does not decode or compile: no separate figure.
        compiled = f"{_fmt(comp.get('p99'))} ms" if p["client"] == "agent" else "-"
        lines.append(
            f"| {p['client']} | {p.get('mesh_services', 1):,} | {p['watchers']:,} | "
            f"{p['rounds']} | "
            f"{p['deliveries']:,}/{p['expected_deliveries']:,}"
            f" | {_fmt(rec.get('p50'))} ms | {_fmt(rec.get('p90'))} ms | {_fmt(rec.get('p99'))} ms"
            f" | {_fmt(rec.get('max'))} ms | {compiled} | {_fmt(apply_ms)} ms"
            f" | {_fmt(control_cpu)} s, {_fmt(client_cpu)} s | {meets} |"
        )
    cli = [r for p in result["propagation"] for r in p["per_round"] if r["via"] != "admin API"]
    if cli:
        lines += [
            "",
            "One extra round per row went through the real CLI (`meshctl apply -f`, a new "
            "Python process, so it includes the CLI's start-up):",
            "",
            "| client | watchers | `meshctl apply` returned | last watcher received "
            "| p99 received |",
            "|---|---:|---:|---:|---:|",
        ]
        for p in result["propagation"]:
            for r in p["per_round"]:
                if r["via"] != "admin API":
                    lines.append(
                        f"| {p['client']} | {p['watchers']:,} | {_fmt(r['apply_call_ms'])} ms | "
                        f"{_fmt(r['receive_ms'].get('max'))} ms | "
                        f"{_fmt(r['receive_ms'].get('p99'))} ms |"
                    )
    lines += [
        "",
        "Limits of the method: one Python process and one event loop hold every "
        "simulated instance (TLS, HTTP parsing, JSON, and in agent mode decoding, compiling "
        "and reporting for all of them), on the same 2 cores as the control service and "
        "whatever else runs on the machine. A real fleet spreads the client work over N "
        "processes, so agent-mode figures are an upper bound; where the client's CPU per "
        "round approaches the round's wall time, the client was the bottleneck. Heartbeats "
        f"(one `PUT /v1/instances/…` per instance every {HEARTBEAT_INTERVAL:g} s, i.e. "
        "N/5 requests per second on the control service) are off by default because, "
        "simulated in the same single process, they add client work that real instances "
        "would do in parallel; `--heartbeats` turns them on.",
        "",
        *_replica_lines(result),
        "## CSR signing",
        "",
    ]
    s = result.get("signing", {})
    lines += [
        "| path | signatures | per second | p50 latency (API) or mean (in process) | p99 latency "
        "| control CPU / signature |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, label in (
        ("api_token", "`POST /v1/sign` with a join token (bootstrap)"),
        ("api_renewal", "`POST /v1/sign` over mTLS with an SVID (renewal)"),
    ):
        r = s.get(key, {})
        lat = r.get("latency_ms", {})
        lines.append(
            f"| {label} | {r.get('signed', 0):,} | {_fmt(r.get('per_second'))} | "
            f"{_fmt(lat.get('p50'))} ms | {_fmt(lat.get('p99'))} ms | "
            f"{_fmt(r.get('control_cpu_ms_per_signature'))} ms |"
        )
    for key, label in (
        ("in_process_plane", "`ControlPlane.sign` in process (CA + SQLite, no HTTP)"),
        ("in_process_ca", "`CertificateAuthority.sign_csr` in process (crypto only)"),
    ):
        r = s.get(key, {})
        lines.append(
            f"| {label} | {r.get('signed', 0):,} | {_fmt(r.get('per_second'))} | "
            f"{_fmt(r.get('us_per_signature'))} µs | - | - |"
        )
    lines += [
        "",
        f"API rows: {s.get('api_token', {}).get('concurrency', '?')} concurrent clients on "
        "keep-alive connections, CSRs prepared beforehand (a P-256 key and CSR cost the "
        f"client {_fmt(s.get('client_csr_us'))} µs). Token bootstrap also checks and consumes "
        "the token in SQLite.",
        "",
        "## Registration against registry size",
        "",
        "`ControlPlane.register` called in process (no HTTP, no TLS) for N new instances "
        "(pure clients, port 0, as the agent's first registration). A new registration "
        "refreshes the snapshot cache, which re-reads every live instance from SQLite "
        "(`ControlPlane.state`); a heartbeat that changes nothing does not.",
        "",
        "| instances | all N registrations | one new registration at the end | "
        "`state()` read | heartbeat |",
        "|---:|---:|---:|---:|---:|",
        *[
            f"| {r['instances']:,} | {_fmt(r['register_all_seconds'])} s | "
            f"{_fmt(r['new_registration_ms_at_end'])} ms | {_fmt(r['state_read_ms'])} ms | "
            f"{_fmt(r['heartbeat_ms'])} ms |"
            for r in result.get("registration", [])
        ],
        "",
        "## Snapshot size against mesh size",
        "",
        "Synthetic mesh: every service has "
        f"{result['snapshot_endpoints_per_service']} serving instances, a TrafficPolicy (two "
        "subsets, two routes, retries, breaker) and an AuthorizationPolicy. The caller is one "
        "service; *scoped* means it declared 3 dependencies (`MESH_DEPENDENCIES`). Bytes are "
        "the JSON body `GET /v1/snapshot` returns; times are medians of a few runs of the "
        "pure builder (`build_snapshot` for the first caller of a new mesh state, which "
        "also digests every service entry once for all callers of that state), the "
        "encoder (`encode_snapshot` + `json.dumps`), "
        "what the watch handler renders for a new snapshot version (`encode_snapshot` + "
        "`json.dumps`, once per version and key: every watcher of that snapshot is sent the "
        "same bytes), and the client's decode + compile.",
        "",
        "| services | endpoints | snapshot | services listed | body | build | encode "
        "| API render per version | client decode + compile |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result.get("snapshots", []):
        lines.append(
            f"| {r['services']:,} | {r['endpoints']:,} | {r['scope']} | "
            f"{r['services_in_snapshot']:,} | {r['body_bytes'] / 1024:,.1f} KiB | "
            f"{_fmt(r['build_ms'])} ms | {_fmt(r['encode_ms'])} ms | "
            f"{_fmt(r['api_render_ms'])} ms | {_fmt(r['client_decode_compile_ms'])} ms |"
        )
    lines += [
        "",
        "Cost of one state change (an apply, a registration, an expiry) in the watch cache, "
        "which rebuilds the snapshot of every cached watch key (`SnapshotCache.set_state`); "
        "measured with as many keys as fit in a few seconds, projected to one key per "
        "service (every service watched by its own unscoped instances):",
        "",
        "| services | keys measured | per key | projected, one key per service |",
        "|---:|---:|---:|---:|",
    ]
    for r in result.get("snapshots", []):
        c = r.get("cache_rebuild")
        if c:
            lines.append(
                f"| {r['services']:,} | {c['keys_measured']} | {_fmt(c['per_key_ms'])} ms | "
                f"{_fmt(c['projected_ms_one_key_per_service'])} ms |"
            )
    lines.append("")
    return "\n".join(lines)


def _replica_lines(result: dict[str, Any]) -> list[str]:
    """The cross-replica propagation section (issue 13), when the run measured it."""
    rows = result.get("replica_propagation")
    if not rows:
        return []
    lines = [
        "## Propagation across replicas: `apply` on replica A → watchers of replica B",
        "",
        "Two `meshctl control serve --store etcd://…` replicas on a real 3-member etcd "
        "cluster (Debian's etcd-server, on 127.0.0.1 like the tests'), one CA. N light "
        "watchers hold their long-poll on replica B only; each round applies the "
        "TrafficPolicy through replica A's admin API. Time from just before the apply call "
        "to the new snapshot received from B: A's etcd transaction, etcd's watch event to "
        "B, B's rebuild and fan-out. Target (issue 13): p99 ≤ 1 s.",
        "",
        "| watchers | rounds | delivered | receive p50 | p90 | p99 | max | watch errors "
        "| p99 ≤ 1 s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|:--|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['watchers']:,} | - | - | - | - | - | - | - | {r['skipped']} |")
            continue
        rec = r["receive_ms"]
        meets = "yes" if rec.get("p99", 1e9) <= TARGET_P99_SECONDS * 1000 else "**no**"
        lines.append(
            f"| {r['watchers']:,} | {r['rounds']} | "
            f"{r['deliveries']:,}/{r['expected_deliveries']:,} | {_fmt(rec.get('p50'))} ms | "
            f"{_fmt(rec.get('p90'))} ms | {_fmt(rec.get('p99'))} ms | "
            f"{_fmt(rec.get('max'))} ms | {r['watch_errors']} | {meets} |"
        )
    return [*lines, ""]


def plot(result: dict[str, Any], path: Path) -> bool:
    """Propagation percentiles per client mode and watcher count as a PNG; False without
    matplotlib."""
    plt = document.pyplot()
    if plt is None:
        return False
    rows = result.get("propagation", [])
    if not rows:
        return False
    keys = ("p50", "p90", "p99", "max")
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / len(keys)
    for k, key in enumerate(keys):
        values = [r["receive_ms"].get(key, 0.0) / 1000 for r in rows]
        ax.bar([i + k * width for i in range(len(rows))], values, width, label=key)
    ax.axhline(TARGET_P99_SECONDS, color="black", linestyle="--", linewidth=1)
    ax.text(len(rows) - 0.5, TARGET_P99_SECONDS, " target p99", va="bottom", ha="right")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
    ax.set_xticklabels(
        [
            f"{r['client']}\n{r['watchers']:,} watchers"
            + (f"\n{r['mesh_services']} services" if r.get("mesh_services", 1) > 1 else "")
            for r in rows
        ]
    )
    ax.set_ylabel("apply → snapshot received (s)")
    ax.set_title("Config propagation to N watching instances (one client process)")
    ax.legend()
    document.save_figure(plt, fig, path)
    return True
