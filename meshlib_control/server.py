"""Run the control service: HTTPS (workload + admin API) with its own SVID."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from datetime import UTC, datetime
from typing import Any

import uvicorn

from meshlib.errors import ConfigError
from meshlib.identity.tls import TLSContexts
from meshlib.integrations.uvicorn import listen_socket, tls_protocol
from meshlib_control.api.app import create_app
from meshlib_control.plane import ControlPlane
from meshlib_control.settings import Settings, split_hostport

__all__ = ["run", "serve"]

log = logging.getLogger("meshlib_control")

SWEEP_INTERVAL = 1.0
OWN_CERT_CHECK_INTERVAL = 3600.0


async def _sweep(plane: ControlPlane) -> None:
    while True:
        await asyncio.sleep(SWEEP_INTERVAL)
        try:
            plane.expire()
        except Exception:  # the sweeper must survive a bad tick
            log.exception("instance sweep failed")


async def _renew_own_certificate(plane: ControlPlane, contexts: TLSContexts) -> None:
    """Reissue the control service's serving SVID at half its lifetime."""
    while True:
        svid = contexts.svid
        delay = (svid.renewal_time(jitter=0.0) - datetime.now(UTC)).total_seconds()
        await asyncio.sleep(min(max(delay, 1.0), OWN_CERT_CHECK_INTERVAL))
        if datetime.now(UTC) >= svid.renewal_time(jitter=0.0):
            contexts.update(plane.control_svid())
            log.warning("renewed the control service's own certificate")


async def serve(
    settings: Settings, *, ready: Any = None, scrape_interval: float | None = None
) -> None:
    """Serve until SIGINT/SIGTERM. *ready* (a callable) gets the bound URL.

    *scrape_interval* overrides how often instances' admin ports are scraped (5 s).
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    # Bound here, so a taken port is one clear error, not uvicorn's log and SystemExit(3).
    sock = listen_socket(*split_hostport(settings.listen, "--listen"), "--listen")
    plane = ControlPlane(settings)
    plane.follow_store(asyncio.get_running_loop())
    if scrape_interval is not None:
        plane.observer.interval = scrape_interval
    host, port = split_hostport(settings.listen, "--listen")
    tls_dir = settings.data_dir / "tls"
    tls_dir.mkdir(mode=0o700, exist_ok=True)
    contexts = TLSContexts(plane.control_svid(), files_dir=tls_dir)
    plane.on_bundle_change(lambda pem: contexts.update(contexts.svid.with_bundle(pem)))
    config = uvicorn.Config(
        create_app(plane),
        host=host,
        port=port,
        # Callers' leaves are held to the X.509-SVID rules for the control service's own
        # trust domain: a root the mesh trusts must not vouch for another domain's names.
        http=tls_protocol(H11Protocol, validator=lambda: contexts.peer_validator),
        ssl_context_factory=lambda _c, _d: contexts.server_context(require_client_cert=False),
        log_level="warning",
        lifespan="off",
        timeout_keep_alive=75,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    # We own the signals: uvicorn would re-raise them after shutdown and skip our cleanup.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign, assignment]
    sweeper = asyncio.create_task(_sweep(plane))
    renewer = asyncio.create_task(_renew_own_certificate(plane, contexts))
    scraper = asyncio.create_task(plane.observer.run())
    fetcher = asyncio.create_task(plane.jwks.run(plane.refresh))  # RequestAuthentication keys
    consul: list[asyncio.Task[None]] = []
    if settings.consul is not None:
        from meshlib_control.consul.link import start_consul  # py-consul: only when used

        consul = start_consul(plane)

    def shutdown() -> None:
        # Stop expiring instances first: while the listener drains, heartbeats cannot
        # arrive, and expiring on their absence would push empty snapshots to watchers.
        sweeper.cancel()
        plane.cache.release_all()  # long-polls answer now instead of holding the shutdown
        server.should_exit = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, shutdown)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.02)
    xds = None
    failure: ConfigError | None = None
    if server.started and settings.xds_listen is not None:
        from meshlib_control.xds.ads import XdsServer  # the Envoy protobufs: only when used

        xds = XdsServer(plane, contexts)
        try:
            xds_port = await xds.start(settings.xds_listen)
        except (OSError, RuntimeError) as exc:
            failure = ConfigError(f"--xds-listen {settings.xds_listen}: {exc}")
            shutdown()
        else:
            xds_host, _ = split_hostport(settings.xds_listen, "--xds-listen")
            plane.xds_address = f"{xds_host}:{xds_port}"
            log.warning("ADS (xDS v3) for Envoy sidecars on %s (mTLS)", plane.xds_address)
    if server.started and not server.should_exit:
        bound = server.servers[0].sockets[0].getsockname()[1]
        url = f"https://{host}:{bound}"
        plane.write_admin_credentials(url)
        log.warning(
            "meshlib control service listening on %s as %s (trust domain %s)",
            url,
            plane.control_id,
            plane.trust_domain,
        )
        if ready is not None:
            ready(url)
    try:
        await serving
    finally:
        if xds is not None:
            await xds.stop(grace=0.5)
        for task in (sweeper, renewer, scraper, fetcher, *consul):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        plane.store.close()
        sock.close()
    if failure is not None:
        raise failure


def run(settings: Settings, *, scrape_interval: float | None = None) -> None:
    """Blocking entry point for ``meshctl control serve``."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(
        serve(
            settings,
            ready=lambda url: print(f"control service ready at {url}", flush=True),
            scrape_interval=scrape_interval,
        )
    )
