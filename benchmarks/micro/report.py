"""The micro-benchmark's results as Markdown and as a PNG plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import document
from benchmarks.micro.jwt import jwt_markdown

SYNC_PATH = (
    "MeshTransport._start/_finish",
    "ServiceRuntime.choose",
    "EndpointStats",
    "ServiceRuntime.admit",
    "HttpCall.attempt_request",
    "ServiceRuntime.record",
)


def layer_sums(layers: Sequence[dict[str, Any]]) -> dict[str, float]:
    """ns per GET summed over the layers each variant of the call path goes through."""
    ns = {r["entry_point"]: r["median_ns"] for r in layers}
    base = sum(ns[k] for k in SYNC_PATH)
    telemetry = ns["MeshTelemetry, SDK TracerProvider"]
    # The first try runs without a retrier (httpx_mesh builds one only when a retry is
    # due), so a GET that succeeds at once pays no retry wrapper; a retried one pays it once.
    return {
        "telemetry off": base,
        "telemetry on": base + telemetry,
        "retried once, sync (adds the wrapper)": base + ns["build_retrying(async_=False)"],
        "retried once, async (adds the wrapper)": base + ns["build_retrying(async_=True)"],
    }


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} MiB"


def imports_markdown(imports: dict[str, Any] | None) -> list[str]:
    """The import-footprint section (nothing for a document recorded before it existed)."""
    if not imports:
        return []
    mesh, bare = imports["mesh"], imports["httpx"]
    lines = [
        "## Import footprint of an HTTP-only service",
        "",
        "A fresh interpreter runs `import meshlib`, then constructs `meshlib.Mesh(...)` "
        "without starting it; another runs `import httpx` alone (what an HTTP-only service "
        "pays anyway). Issue 12: `import meshlib` imports no gRPC, no YAML parser and no "
        f"control-service code ({', '.join(f'`{f}`' for f in imports['forbidden'])}). "
        "*First imported by*: the innermost meshlib module on the stack, and (via) the module "
        "whose import statement asked for it.",
        "",
    ]
    if "error" in mesh:
        return [*lines, f"**Not measured**: {mesh['error'][:300]}", ""]
    forbidden = imports["forbidden_after_construct"] or imports["forbidden_after_import"] or []
    verdict = "met" if not forbidden else f"**missed** ({', '.join(forbidden)} loaded)"
    bare_modules = bare.get("modules_after_import", 0) - bare.get("modules_at_start", 0)
    lines += [
        "| step | modules loaded | RSS added | seconds |",
        "|---|---:|---:|---:|",
        f"| `import httpx` (baseline) | {bare_modules:,} "
        f"| {_mib(imports['rss_httpx_import_mib'])} | {bare.get('import_s', 0):.3f} |",
        f"| `import meshlib` | {mesh['modules_after_import'] - mesh['modules_at_start']:,} "
        f"({mesh['meshlib_modules_after_import']} of meshlib) | {_mib(imports['rss_import_mib'])} "
        f"({_mib(imports['rss_over_httpx_mib'])} over `import httpx`) | {mesh['import_s']:.3f} |",
    ]
    if "construct_s" in mesh:
        lines.append(
            f"| `meshlib.Mesh(...)`, not started | "
            f"{mesh['modules_after_construct'] - mesh['modules_after_import']:,} more | "
            f"{_mib(imports['rss_construct_mib'])} | {mesh['construct_s']:.3f} |"
        )
    lines += [
        "",
        f"Issue 12's rule (no gRPC, YAML parser or control-service code): {verdict}.",
        "",
        "| package | after `import meshlib` | after `Mesh(...)` | after `import httpx` | "
        "first imported by (via) |",
        "|---|---|---|---|---|",
    ]
    after_construct = mesh.get("watched_after_construct", mesh["watched_after_import"])
    for name in imports["watched"]:
        who = mesh["first_importer"].get(name) or {}
        by = f"`{who.get('meshlib')}` (`{who.get('via')}`)" if who else "-"
        lines.append(
            f"| `{name}`{' (ruled out)' if name in imports['forbidden'] else ''} | "
            f"{_yes(name in mesh['watched_after_import'])} | {_yes(name in after_construct)} | "
            f"{_yes(name in bare.get('watched_after_import', []))} | {by} |"
        )
    return [*lines, ""]


def _yes(loaded: bool) -> str:
    return "**loaded**" if loaded else "no"


def render_markdown(result: dict[str, Any]) -> str:
    """The results as Markdown, readable on its own (docs/benchmarks.md includes it)."""
    m = result["machine"]
    lines = [
        "# Micro-benchmark: where library mode spends its time per request",
        "",
        document.measured_line(
            result,
            command="python -m benchmarks.micro",
            software=f"{m['openssl']}, httpx {m['httpx']}",
        ),
        "",
        *imports_markdown(result.get("imports")),
        "## Per-layer cost, in process",
        "",
        "Each row times one per-request entry point of meshlib's mesh transport on the real "
        "objects, compiled from a TrafficPolicy with two routes (the second matches), two "
        "subsets, retries, outlier detection and a circuit breaker, three endpoints. "
        "`time.perf_counter_ns` over "
        f"{result['layers'][0]['iterations']:,} calls, repeated; the median per call and the "
        "range over repeats, with the cost of an empty call (and, where noted, of the step "
        "it builds on) subtracted. ns = nanoseconds; 1 µs = 1,000 ns.",
        "",
        "| layer | what | entry point | median ns/op | min - max over repeats |",
        "|---|---|---|---:|---:|",
    ]
    for r in result["layers"]:
        lines.append(
            f"| {r['layer']} | {r['what']} | `{r['entry_point']}` | {r['median_ns']:,.0f} | "
            f"{r['min_ns']:,.0f} - {r['max_ns']:,.0f} |"
        )
    sums = layer_sums(result["layers"])
    lines += [
        "",
        "Summed over the steps one GET goes through (transport start + finish, choose, "
        "load stats, admission, build the attempt, record outcome; plus the SDK span and "
        "metrics when telemetry is on; plus the retry wrapper for a call that is retried): "
        + "; ".join(f"{k} **{v / 1000:,.1f} µs**" for k, v in sums.items())
        + ". The whole-path table below measures the same thing end to end (it also "
        "includes httpx's per-request work that the mesh transport repeats, such as "
        "building the attempt's request object and mapping the response).",
    ]
    t = result["tls"]
    lines += [
        "",
        "Notes: *build the attempt* excludes the per-call bookkeeping and the endpoint "
        "choice it calls, the *retry wrapper* rows the bookkeeping; the *telemetry* span "
        "rows are the transport's `_start` + `_finish` with telemetry minus the same "
        "without it. The mesh transport runs the first try without a retrier and builds "
        "the tenacity retrier only when a retry is due (it replays the first result), so "
        "the *retry wrapper* rows are what a retried call pays, not every call.",
        "",
        *jwt_markdown(result.get("jwt")),
        "## TLS on loopback sockets",
        "",
        "Client in this process, server in a child process (blocking sockets, one thread per "
        "connection); the mesh's own client context and SVIDs (ECDSA P-256, issued by a "
        "mesh CA), client certificate required, SPIFFE ID checked after the handshake as "
        f"the transport does. A request is {t['request_bytes']} bytes, a response "
        f"{t['response_bytes']} bytes.",
        "",
        "| measurement | samples | p50 | p99 | mean |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label in (
        ("tcp_connect", "TCP connect"),
        ("tcp_connect_mtls_handshake", "TCP connect + mTLS handshake + SPIFFE check"),
        ("plaintext_round_trip", "request/response, plaintext keep-alive"),
        ("tls_round_trip", "request/response, TLS keep-alive"),
    ):
        r = t[key]
        lines.append(
            f"| {label} | {r['count']:,} | {r['p50_us']:,.1f} µs | {r['p99_us']:,.1f} µs | "
            f"{r['mean_us']:,.1f} µs |"
        )
    lines += [
        "",
        f"A new mTLS connection costs **{t['handshake_added_us']:,.1f} µs** more than a TCP "
        f"connect (both sides' work); once open, TLS adds **{t['tls_added_per_request_us']:,.1f}"
        " µs** per request/response (encrypting and decrypting both directions, both sides). "
        "meshlib pools connections per destination, so the handshake is paid once per "
        "connection, not per request.",
        "",
        "## Whole client path against a local uvicorn server",
        "",
        "Sequential GETs over one kept-alive connection to a minimal ASGI app under uvicorn "
        "(child process), with plaintext and mTLS listeners. The series run interleaved, "
        f"{result['profile_settings']['path_repeats']} times each "
        f"({result['path']['requests_per_series']:,} requests per run); the percentiles are "
        "over every request. The meshlib clients are `httpx.Client`/`AsyncClient` over "
        "`MeshTransport`/`AsyncMeshTransport` (what `mesh.client()` builds) with a compiled "
        "snapshot naming the server as the one endpoint of `backend`, with no TrafficPolicy: "
        "the implicit default route (least-request, up to 2 retries; no retrier is built "
        "unless a try fails). *Telemetry on* is an SDK TracerProvider with a batch processor "
        "(spans dropped by the exporter) plus meshlib's metrics; *off* passes no "
        "`MeshTelemetry` at all (a `Mesh` always passes one, so its clients record metrics).",
        "",
        "| client | p50 | p99 | mean | over plaintext p50 | over mTLS p50 | over mTLS p99 "
        "| mean of each run |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["path"]["rows"]:
        lines.append(
            f"| {r['client']} | {r['p50_us']:,.1f} µs | {r['p99_us']:,.1f} µs | "
            f"{r['mean_us']:,.1f} µs | {r['over_plaintext_p50_us']:+,.1f} µs | "
            f"{r['over_mtls_p50_us']:+,.1f} µs | {r['over_mtls_p99_us']:+,.1f} µs | "
            f"{', '.join(f'{x:,.0f}' for x in r['repeat_means_us'])} |"
        )
    by_client = {r["client"]: r for r in result["path"]["rows"]}
    shared = by_client.get("meshlib async, shared client")
    fresh = by_client.get("meshlib async, client per request")
    if shared is not None and fresh is not None:
        lines += [
            "",
            "*Shared client* and *client per request* both send over one `MeshPools` (what a "
            "`Mesh` holds); the second opens and closes an `httpx.AsyncClient` around every "
            "timed request, as the pattern `async with mesh.async_client()` inside a handler "
            f"does: p50 {fresh['p50_us']:,.1f} µs against {shared['p50_us']:,.1f} µs, "
            f"{(fresh['p50_us'] / shared['p50_us'] - 1) * 100:+.1f} % (issue 14's bound: "
            "within 10 %). Without the shared pools every such request paid a new mTLS "
            "handshake.",
        ]
    p = result["path"]["profile"]
    lines += [
        "",
        f"### Profile of the mesh path (sync, telemetry on, {p['requests']:,} requests)",
        "",
        "Self time by package under cProfile (it inflates code made of many small calls, "
        "so read these as shares):",
        "",
        "| package | share of self time |",
        "|---|---:|",
    ]
    for package, share in p["self_time_share"].items():
        lines.append(f"| {package} | {share * 100:.1f} % |")
    lines += [
        "",
        "meshlib functions with the largest cumulative time per request (under the profiler):",
        "",
        "| function | cumulative µs/request | self µs/request |",
        "|---|---:|---:|",
    ]
    for f in p["top_meshlib_cumulative_us_per_request"]:
        lines.append(f"| `{f['function']}` | {f['cumulative_us']:,.1f} | {f['self_us']:,.1f} |")
    lines.append("")
    lines += _steps_section(result.get("steps"))
    return "\n".join(lines)


def _steps_section(steps: dict[str, Any] | None) -> list[str]:
    """Interpreter steps per request (benchmarks/micro/steps.py): exact, load-independent."""
    if not steps:
        return []
    lines = [
        "",
        f"## Interpreter steps per request ({steps['requests']:,} requests each)",
        "",
        "Python bytecode instructions executed per request, counted with `sys.settrace` "
        "(opcode events): the same figure on a busy machine as on an idle one. C code (TLS, "
        "httptools, the kernel) is not counted. Client: httpx with hand-wired mTLS against "
        "the mesh's client with metrics on and tracing off (what a `Mesh` gives). Server: "
        "plain uvicorn with TLS against `meshlib.serve`, same FastAPI app, only the server "
        "thread counted.",
        "",
        "| comparison | baseline | mesh | added |",
        "|---|---:|---:|---:|",
    ]
    for row in steps["rows"]:
        lines.append(
            f"| {row['name']} | {row['baseline_steps']:,} | {row['mesh_steps']:,} "
            f"| {row['added_steps']:+,} |"
        )
    for row in steps["rows"]:
        lines += ["", f"Largest differences, {row['name']} (steps per request):", ""]
        lines += [f"- `{t['function']}` {t['steps']:+,.1f}" for t in row["top"]]
    return lines


def plot(result: dict[str, Any], path: Path) -> bool:
    """Per-layer medians and whole-path p50s as a PNG; False without matplotlib."""
    plt = document.pyplot()
    if plt is None:
        return False
    layers = result["layers"]
    rows = result["path"]["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5), width_ratios=(1.3, 1))
    labels = [f"{r['layer']}: {r['what'][:48]}" for r in layers]
    left.barh(labels, [r["median_ns"] / 1000 for r in layers], color="tab:blue")
    left.invert_yaxis()
    left.set_xlabel("µs per request (median)")
    left.set_title("In-process cost of each mesh layer")
    left.tick_params(axis="y", labelsize=7)
    names = [r["client"] for r in rows]
    ys = list(range(len(rows)))
    right.barh([y - 0.2 for y in ys], [r["p50_us"] for r in rows], 0.4, label="p50")
    right.barh([y + 0.2 for y in ys], [r["p99_us"] for r in rows], 0.4, label="p99")
    right.set_yticks(ys)
    right.set_yticklabels(names)
    right.invert_yaxis()
    right.legend()
    right.set_xlabel("µs per request (sequential, keep-alive)")
    right.set_title("Whole client path, local uvicorn server")
    right.tick_params(axis="y", labelsize=8)
    document.save_figure(plt, fig, path)
    return True
