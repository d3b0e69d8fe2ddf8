"""The agent: a daemon thread that keeps a workload's identity and policy current.

It runs its own asyncio loop with three tasks once bootstrapped:

* **watch** — long-polls the control service for the workload's snapshot, compiles each
  new one and publishes it with one reference swap; a snapshot that does not decode or
  compile is rejected whole and reported, and the last good one stays active;
* **heartbeat** — registers the instance and refreshes the registration;
* **renew** — re-keys and renews the SVID at half its lifetime (with jitter); one that
  expired anyway (the control service was down) is never presented: the agent rejoins
  with its re-bootstrap credential (:mod:`meshlib.runtime.renewal`).

With the control service unreachable, everything already installed keeps working, and
the loops retry with capped backoff. The SVID and the last good snapshot are cached on
disk, so a restart while the control service is down starts from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec

from meshlib.config import MeshConfig
from meshlib.errors import ControlPlaneError, IdentityError, MeshError, PolicyError
from meshlib.identity.keys import build_csr, generate_private_key, private_key_pem
from meshlib.identity.spiffe import SpiffeId
from meshlib.identity.svid import SVID
from meshlib.identity.tls import build_client_context
from meshlib.policy.engine import PolicyEngine
from meshlib.policy.snapshot import decode_snapshot
from meshlib.runtime.cache import WorkloadCache
from meshlib.runtime.control_client import CONNECT_TIMEOUT, ControlClient
from meshlib.runtime.loops import AgentLoops, backoff
from meshlib.runtime.renewal import (
    RebootstrapCredential,
    is_refusal,
    is_unusable,
    parse_token_fingerprint,
    rejoin,
    sign_with_token,
)

__all__ = ["Agent", "parse_token_fingerprint"]

log = logging.getLogger("meshlib.agent")

FIRST_CONTACT_TIMEOUT = 3.0
STOP_GRACE = 1.0
WATCH_STOP_GRACE = 0.1

T = TypeVar("T")


class Agent(AgentLoops):
    """Background keeper of one workload's SVID, snapshot and registration.

    Args:
        config: the workload's settings.
        on_identity: called (in the agent thread) with every new SVID.
        on_engine: called with every newly compiled policy engine.
        mode: registered with the instance: ``library``, or ``sidecar`` for the agent of
            ``meshctl sidecar``, which keeps identity and registration but watches no
            snapshot (its Envoy gets the configuration over xDS).
    """

    def __init__(
        self,
        config: MeshConfig,
        *,
        on_identity: Callable[[SVID], None],
        on_engine: Callable[[PolicyEngine], None],
        mode: str = "library",
        unknown_keys: Callable[[], list[tuple[str, str]]] | None = None,
    ) -> None:
        self.config = config
        self.mode = mode
        self.instance_id = uuid.uuid4().hex[:16]
        self.cache = WorkloadCache(config.cache_dir)
        self._on_identity = on_identity
        self._on_engine = on_engine
        self._unknown_keys = unknown_keys
        self.spiffe_id: SpiffeId | None = None
        self.svid: SVID | None = None
        self.engine: PolicyEngine | None = None
        self.last_error: str | None = None
        self.fatal: MeshError | None = None
        self.ready = threading.Event()
        self._endpoint: dict[str, Any] | None = None
        self.admin_port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._wake_heartbeat: asyncio.Event | None = None
        self._client: ControlClient | None = None
        self._svid_received_at = datetime.now(UTC)
        self._ctx_cache: tuple[SVID, Any] | None = None
        self._renewal_error: str | None = None

    # ------------------------------------------------------------------ thread control

    def start(self) -> None:
        """Start the agent thread (returns at once; wait on :attr:`ready`)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="meshlib-agent", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Deregister (best effort), stop the loops and join the thread."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
        """Run *coro* on the agent loop and wait for it (from another thread)."""
        if self._loop is None or self._loop.is_closed():
            coro.close()
            return None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def set_endpoint(self, endpoint: dict[str, Any] | None) -> None:
        """Advertise (or with None, withdraw) this instance's serving address."""
        self._endpoint = endpoint
        loop, wake = self._loop, self._wake_heartbeat
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    def withdraw(self, timeout: float = 2.0) -> None:
        """Withdraw the serving address and tell the control service now (best effort)."""
        self._endpoint = None
        if self._client is None:
            return
        with contextlib.suppress(MeshError, TimeoutError):
            self.submit(self._client.register(self.instance_id, self._registration()), timeout)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # the thread must never die silently
            log.exception("meshlib agent stopped")
            self.fatal = exc if isinstance(exc, MeshError) else MeshError(repr(exc))

    # ------------------------------------------------------------------ main

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._wake_heartbeat = asyncio.Event()
        try:
            await self._boot()
            if self.fatal is not None or self._stop.is_set():
                return
            others = [
                asyncio.create_task(self._heartbeat_loop()),
                asyncio.create_task(self._renew_loop()),
            ]
            if self._unknown_keys is not None:
                others.append(asyncio.create_task(self._unknown_keys_loop()))
            # A sidecar's agent watches too, for the trust bundle only (its Envoy's SDS
            # bundle file follows it); its policy reaches Envoy over xDS.
            watch = [asyncio.create_task(self._watch_loop())]
            tasks = watch + others
            await self._stop.wait()
            self._wake_heartbeat.set()
            # Let the loops finish what they are doing (a request cancelled mid-connect
            # would leave its socket behind). The watch is usually parked in a long-poll
            # read, which is safe to cancel, so it gets only a short grace.
            await asyncio.wait(others, timeout=STOP_GRACE)
            if watch:
                await asyncio.wait(watch, timeout=WATCH_STOP_GRACE)
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._client is not None:
                with contextlib.suppress(MeshError, TimeoutError):
                    await asyncio.wait_for(self._client.deregister(self.instance_id), 2.0)
        finally:
            if self._client is not None:
                await self._client.aclose()

    async def _boot(self) -> None:
        """Get an identity (cache or token) and a first snapshot (control or cache)."""
        assert self._stop is not None
        cached = self.cache.load_svid(allow_expired=True)
        if cached is not None and cached.spiffe_id.service != self.config.service:
            cached = None
        expired: SVID | None = None
        if cached is not None and is_unusable(cached, datetime.now(UTC)):
            expired = cached  # not installed: only its identity and bundle are of use
        elif cached is not None:
            self._install_svid(cached, save=False)
        attempt = 0
        while self.svid is None and not self._stop.is_set():
            try:
                if expired is not None:
                    await self._rejoin(expired)
                else:
                    await self._bootstrap_with_token()
            except ControlPlaneError as exc:
                self.last_error = str(exc)
                if exc.status is not None and 400 <= exc.status < 500:
                    self.fatal = exc
                    return
                log.warning("bootstrap failed, retrying: %s", exc)
                await self._sleep(backoff(attempt))
                attempt += 1
            except MeshError as exc:
                self.last_error = str(exc)
                self.fatal = exc
                return
        if self.svid is None:
            return
        self._client = self._control_client()
        # Room for every address but the last to time out connecting before it fails over.
        first_contact = FIRST_CONTACT_TIMEOUT + CONNECT_TIMEOUT * (len(self._client.urls) - 1)
        if self.mode != "library":
            with contextlib.suppress(ControlPlaneError, TimeoutError):
                await asyncio.wait_for(
                    self._client.register(self.instance_id, self._registration()),
                    first_contact,
                )
            self.ready.set()  # the heartbeat loop keeps trying to register
            return
        # Prefer a fresh snapshot; fall back to the cached one if control is down.
        try:
            await asyncio.wait_for(
                self._client.register(self.instance_id, self._registration()),
                first_contact,
            )
            await self._watch_once("", first_contact, wait=0.0)
        except (ControlPlaneError, TimeoutError) as exc:
            self.last_error = str(exc)
            snapshot = self.cache.load_snapshot()
            if snapshot is not None:
                log.warning("control service unavailable (%s); starting from cache", exc)
                self._install_snapshot_dict(None, snapshot=snapshot)

    def _control_client(self) -> ControlClient:
        assert self.svid is not None
        if not self.config.control_urls:
            raise ControlPlaneError("MESH_CONTROL_URL: not set")
        td = self.svid.spiffe_id.trust_domain
        return ControlClient(
            self.config.control_urls,
            expected=f"spiffe://{td}/control",
            tls=self._client_context,
        )

    async def _each_address(self, call: Callable[[str], Awaitable[T]]) -> T:
        """``call(url)`` on each control address until one answers (a 4xx is an answer).

        For the calls made without the agent's client (the first sign with a join token,
        a rejoin): current address of the client first, then the others in list order.
        """
        urls = list(self.config.control_urls)
        if not urls:
            raise ControlPlaneError("MESH_CONTROL_URL: not set")
        if self._client is not None and self._client.url in urls:
            start = urls.index(self._client.url)
            urls = urls[start:] + urls[:start]
        error: ControlPlaneError | None = None
        for url in urls:
            try:
                return await call(url)
            except ControlPlaneError as exc:
                if is_refusal(exc):
                    raise
                error = exc
                if len(urls) > 1:
                    log.warning("control service at %s failed, trying the next: %s", url, exc)
        assert error is not None
        raise error

    def _client_context(self) -> Any:
        assert self.svid is not None
        ctx = self._ctx_cache
        if ctx is None or ctx[0] is not self.svid:
            ctx = (
                self.svid,
                build_client_context(self.svid, self.svid.bundle_pem, self.cache.directory),
            )
            self._ctx_cache = ctx
        return ctx[1]

    async def _bootstrap_with_token(self) -> None:
        key = generate_private_key()
        self._accept(await self._sign_with_token(key), key)

    async def _sign_with_token(self, key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
        token = self.config.token
        if token is None or not self.config.control_urls:
            raise MeshError(
                "no usable cached SVID and no join token: set MESH_TOKEN "
                "(from `meshctl token create --service "
                f"{self.config.service} --namespace {self.config.namespace}`) and MESH_CONTROL_URL"
            )

        async def sign(url: str) -> dict[str, Any]:
            return await sign_with_token(
                url=url,
                token=token,
                namespace=self.config.namespace,
                service=self.config.service,
                key=key,
                instance_id=self.instance_id,
                files_dir=self.cache.directory,
            )

        return await self._each_address(sign)

    async def _rejoin(self, svid: SVID) -> None:
        """New SVID for one that expired (or is about to): see :mod:`meshlib.runtime.renewal`."""
        key = generate_private_key()

        async def with_token() -> dict[str, Any]:
            return await self._sign_with_token(key)

        async def at(url: str) -> dict[str, Any]:
            return await rejoin(
                url=url,
                svid=svid,
                credential=self.cache.load_rebootstrap(),
                csr_pem=build_csr(key, svid.spiffe_id),
                instance_id=self.instance_id,
                files_dir=self.cache.directory,
                now=datetime.now(UTC),
                with_token=with_token if self.config.token else None,
            )

        answer = await self._each_address(at)
        self._accept(answer, key)
        log.warning("rejoined as %s after the SVID expired", svid.spiffe_id)
        if self._wake_heartbeat is not None:
            self._wake_heartbeat.set()  # re-register now: the lease may have lapsed

    def _accept(self, answer: dict[str, Any], key: ec.EllipticCurvePrivateKey) -> None:
        """Install the SVID of a ``/v1/sign`` answer and keep its re-bootstrap credential."""
        svid = SVID.from_pem(
            answer["certificate"].encode(), private_key_pem(key), answer["bundle"].encode()
        )
        self._install_svid(svid, save=True)
        credential = RebootstrapCredential.from_answer(answer)
        if credential is not None:
            self.cache.save_rebootstrap(credential)

    # ------------------------------------------------------------------ installing

    def _install_snapshot_dict(self, body: dict[str, Any] | None, *, snapshot: Any = None) -> str:
        """Adopt a live snapshot's trust bundle, then (library mode) its policy."""
        if body is not None:
            snapshot = decode_snapshot(body)
            self._adopt_bundle(snapshot.trust_bundle)
            if self.mode != "library":
                return str(snapshot.version)
        return super()._install_snapshot_dict(body, snapshot=snapshot)

    def _adopt_bundle(self, bundle: str) -> None:
        """Trust *bundle* from now on: every TLS context and the sidecar's SDS file follow.

        Raises:
            PolicyError: the bundle is unusable; the whole snapshot is rejected.
        """
        svid = self.svid
        if not bundle or svid is None or bundle.encode() == svid.bundle_pem:
            return
        try:
            updated = svid.with_bundle(bundle.encode())
        except IdentityError as exc:
            raise PolicyError("trustBundle", str(exc)) from exc
        received = self._svid_received_at  # same certificate: renewal stays on schedule
        self._install_svid(updated, save=True)
        self._svid_received_at = received
        log.warning("trust bundle from the snapshot installed (%d root(s))", bundle.count("BEGIN"))

    def _install_svid(self, svid: SVID, *, save: bool) -> None:
        if save:
            self.cache.save_svid(svid)
        self.svid = svid
        self.spiffe_id = svid.spiffe_id
        self._svid_received_at = datetime.now(UTC)
        self._on_identity(svid)
