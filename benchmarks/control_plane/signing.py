"""CSR signing: through the API (join token, mTLS renewal), the plane in process, the bare CA."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks.control_plane.control import ControlProcess, bootstrap_identity
from benchmarks.control_plane.settings import TRUST_DOMAIN, Profile
from benchmarks.control_plane.stats import ms, percentiles
from meshlib.errors import ControlPlaneError
from meshlib.identity.keys import build_csr, generate_private_key
from meshlib.identity.spiffe import SpiffeId
from meshlib.identity.tls import build_client_context
from meshlib.runtime.control_client import ControlClient
from meshlib_control.cli import AdminClient


def _csrs(count: int, service: str) -> tuple[list[bytes], float]:
    spiffe_id = SpiffeId.for_service(TRUST_DOMAIN, "default", service)
    started = time.perf_counter()
    out = [build_csr(generate_private_key(), spiffe_id) for _ in range(count)]
    return out, time.perf_counter() - started


async def _sign_through_api(
    control: ControlProcess, contexts: Any, csrs: list[bytes], token: str | None, profile: Profile
) -> dict[str, Any]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for csr in csrs:
        queue.put_nowait(csr)
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.perf_counter() + profile.csr_time_cap

    async def worker() -> None:
        client = ControlClient(control.url, expected=control.control_id, tls=lambda: contexts)
        try:
            await client.sign(csrs[0], token=token)  # warm the connection (TLS handshake)
            while time.perf_counter() < deadline:
                try:
                    csr = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t = time.perf_counter()
                try:
                    await client.sign(csr, token=token)
                except ControlPlaneError as exc:
                    errors.append(str(exc))
                    continue
                latencies.append(time.perf_counter() - t)
        finally:
            await client.aclose()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(profile.csr_concurrency)))
    elapsed = time.perf_counter() - started
    lat = percentiles(latencies)
    return {
        "signed": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "concurrency": profile.csr_concurrency,
        "seconds": round(elapsed, 3),
        "per_second": round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms": {k: ms(v) for k, v in lat.items() if k != "count"},
    }


def _rate(fn: Callable[[bytes], object], csrs: list[bytes], cap: float) -> dict[str, Any]:
    deadline = time.perf_counter() + cap
    started = time.perf_counter()
    done = 0
    for csr in csrs:
        if time.perf_counter() > deadline:
            break
        fn(csr)
        done += 1
    elapsed = time.perf_counter() - started
    return {
        "signed": done,
        "seconds": round(elapsed, 3),
        "per_second": round(done / elapsed, 1) if elapsed > 0 else 0.0,
        "us_per_signature": round(elapsed / done * 1e6, 1) if done else None,
    }


async def measure_signing(profile: Profile, workdir: Path) -> dict[str, Any]:
    """Signatures per second: API (token, renewal), ControlPlane in process, bare CA."""
    from meshlib_control.ca.authority import CertificateAuthority
    from meshlib_control.plane import ControlPlane
    from meshlib_control.settings import Settings

    data_dir = workdir / "control-csr"
    control = ControlProcess(data_dir)
    files_dir = workdir / "tls-csr"
    files_dir.mkdir(mode=0o700)
    csrs, csr_seconds = _csrs(profile.csr_count + profile.csr_concurrency, "csr-bench")
    result: dict[str, Any] = {
        "client_csr_us": round(csr_seconds / len(csrs) * 1e6, 1),
        "csrs_prepared": len(csrs),
    }
    try:
        control.start()
        admin = AdminClient(data_dir)
        try:
            identity = await bootstrap_identity(control, admin, "csr-bench", files_dir)
            uses = len(csrs) + profile.csr_concurrency + 1
            answer = await asyncio.to_thread(
                admin.call,
                "POST",
                "/v1/admin/tokens",
                json={"service": "csr-bench", "ttl": "1h", "uses": uses},
            )
        finally:
            admin.close()
        bootstrap_ctx = build_client_context(None, identity.svid.bundle_pem, files_dir)
        cpu0 = control.cpu_seconds()
        result["api_token"] = await _sign_through_api(
            control, bootstrap_ctx, csrs, answer["token"], profile
        )
        cpu1 = control.cpu_seconds()
        result["api_renewal"] = await _sign_through_api(
            control, identity.context, csrs, None, profile
        )
        cpu2 = control.cpu_seconds()
        if cpu0 is not None and cpu1 is not None and cpu2 is not None:
            for name, used in (("api_token", cpu1 - cpu0), ("api_renewal", cpu2 - cpu1)):
                signed = result[name]["signed"] + profile.csr_concurrency
                result[name]["control_cpu_ms_per_signature"] = round(used / signed * 1000, 2)
    finally:
        control.stop()
    # The same work without HTTP: the plane (CA + SQLite records), then the bare CA.
    plane = ControlPlane(Settings(data_dir=workdir / "plane-csr", instance_ttl=timedelta(hours=1)))
    try:
        peer = SpiffeId.for_service(plane.trust_domain, "default", "csr-bench")
        result["in_process_plane"] = _rate(
            lambda csr: plane.sign({"csr": csr.decode()}, peer), csrs, profile.csr_time_cap
        )
        ca = CertificateAuthority.load_or_create(workdir / "ca-csr", TRUST_DOMAIN)
        result["in_process_ca"] = _rate(
            lambda csr: ca.sign_csr(csr, entitled=peer, ttl=timedelta(hours=24)),
            csrs,
            profile.csr_time_cap,
        )
    finally:
        plane.store.close()
    return result
