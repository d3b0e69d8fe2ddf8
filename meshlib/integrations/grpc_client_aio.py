"""The grpc.aio meshed channel: :class:`AsyncMeshChannel` (see grpc_client's docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from meshlib.errors import RequestError
from meshlib.integrations.grpc_client_call import (
    Core,
    Factories,
    GrpcCall,
    MeshLike,
    Multi,
    call_kwargs,
)
from meshlib.integrations.grpc_client_channels import SubChannels
from meshlib.integrations.grpc_client_outcomes import (
    DEFAULT_GRACE,
    GRPC_METHOD,
    MeshRpcError,
    rpc_error,
)
from meshlib.resilience.retry import RESET
from meshlib.traffic.driver import ABORT, SLEEP

try:
    import grpc  # type: ignore[import-untyped]
    import grpc.aio  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("meshlib's gRPC needs grpcio: pip install 'inproc-mesh[grpc]'") from exc

__all__ = ["AsyncMeshChannel"]


class _AioUnaryCall:
    """The awaitable a retrying aio unary call returns; ``code()`` etc. read the last try."""

    def __init__(self, run: Callable[[list[Any]], Awaitable[Any]]) -> None:
        self._last: list[Any] = []
        self._task = asyncio.ensure_future(run(self._last))

    def __await__(self) -> Any:
        return self._task.__await__()

    def cancel(self) -> bool:
        return self._task.cancel()

    def cancelled(self) -> bool:
        return self._task.cancelled()

    def done(self) -> bool:
        return self._task.done()

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._task.add_done_callback(lambda _task: callback(self))

    async def _settle(self) -> Any:
        try:
            await self._task
        except grpc.RpcError as exc:
            return exc
        return self._last[-1] if self._last else None

    async def code(self) -> Any:
        last = await self._settle()
        result = last.code() if last is not None else grpc.StatusCode.OK
        return await result if asyncio.iscoroutine(result) else result

    async def details(self) -> str:
        last = await self._settle()
        result = last.details() if last is not None else ""
        return await result if asyncio.iscoroutine(result) else str(result)

    async def initial_metadata(self) -> Any:
        last = await self._settle()
        result = last.initial_metadata() if last is not None else ()
        return await result if asyncio.iscoroutine(result) else result

    async def trailing_metadata(self) -> Any:
        last = await self._settle()
        result = last.trailing_metadata() if last is not None else ()
        return await result if asyncio.iscoroutine(result) else result


class _AioStreamCall:
    """A started aio stream, with a fault delay or abort applied before the first read."""

    def __init__(self, inner: Any, delay: float, error: MeshRpcError | None) -> None:
        self._inner = inner
        self._delay = delay
        self._error = error

    async def _ready(self) -> None:
        if self._delay:
            delay, self._delay = self._delay, 0.0
            await asyncio.sleep(delay)
        if self._error is not None:
            raise self._error

    def __aiter__(self) -> Any:
        return self._iterate()

    async def _iterate(self) -> Any:
        await self._ready()
        async for item in self._inner:
            yield item

    async def read(self) -> Any:
        await self._ready()
        return await self._inner.read()

    async def code(self) -> Any:
        if self._error is not None:
            return self._error.code()
        return await self._inner.code()

    def __await__(self) -> Any:  # stream_unary calls are awaited for their response
        async def response() -> Any:
            await self._ready()
            return await self._inner

        return response().__await__()

    def __getattr__(self, name: str) -> Any:
        if self._inner is None:
            raise AttributeError(name)
        return getattr(self._inner, name)


class _AioMulti(Multi):
    """An aio multi-callable of any kind (unary-unary calls retry, streams make one try)."""

    def __call__(
        self, request: Any, *, timeout: float | None = None, metadata: Any = None, **options: Any
    ) -> Any:
        kw = call_kwargs(options)
        if self._kind == "unary_unary":
            return self._unary(request, timeout, metadata, kw)
        return self._stream(request, timeout, metadata, kw)

    def _stream(self, request: Any, timeout: float | None, metadata: Any, kw: Any) -> Any:
        """One try (a stream cannot be re-sent); a fault delay waits for the first read."""
        call = GrpcCall(self._core, self._method, metadata, timeout, streaming=True)
        delay, error = call.start_once(None)
        if error is not None:
            return _AioStreamCall(None, delay, error)
        began = time.monotonic()
        inner = self._inner(call.channel())(
            request, timeout=call.driver.timeout, metadata=call.metadata or None, **kw
        )
        inner.add_done_callback(lambda rpc: _after_aio_stream(rpc, call, began))
        return _AioStreamCall(inner, delay, None)

    def _unary(self, request: Any, timeout: float | None, metadata: Any, kw: Any) -> Any:
        call = GrpcCall(self._core, self._method, metadata, timeout, False, request)

        async def tries(last: list[Any]) -> Any:
            driver = call.driver
            action = call.begin()
            while True:  # bounded: the driver allows at most 1 + retries.attempts tries
                if action == SLEEP:
                    await asyncio.sleep(driver.delay)
                    action = call.resume()
                    continue
                if action == ABORT:
                    raise call.fault_error()
                mirror = call.mirror_channel()
                if mirror is not None:
                    self._mirror(mirror, call, request, kw)
                began = time.monotonic()
                rpc = self._inner(call.channel())(
                    request, timeout=driver.timeout, metadata=call.metadata or None, **kw
                )
                last.append(rpc)
                try:
                    response = await rpc
                except grpc.RpcError as exc:
                    action = call.on_error(exc, began)
                    continue
                call.on_ok()
                return response

        async def observed(last: list[Any]) -> Any:
            try:
                response = await tries(last)
            except BaseException as exc:
                call.failed(exc)
                raise
            call.finish(grpc.StatusCode.OK)
            return response

        return _AioUnaryCall(observed)

    def _mirror(self, channel: Any, call: GrpcCall, request: Any, kw: dict[str, Any]) -> None:
        if len(_RECORDING) >= MIRROR_MAX_IN_FLIGHT:
            return

        async def send() -> None:
            with contextlib.suppress(Exception):  # a mirror never affects the caller
                await self._inner(channel)(
                    request, timeout=call.driver.timeout, metadata=call.metadata or None, **kw
                )

        _keep(asyncio.get_running_loop().create_task(send()))


_RECORDING: set[asyncio.Task[None]] = set()
MIRROR_MAX_IN_FLIGHT = 64


def _keep(task: asyncio.Task[None]) -> None:
    _RECORDING.add(task)
    task.add_done_callback(_RECORDING.discard)


def _after_aio_stream(rpc: Any, call: GrpcCall, began: float) -> None:
    """Record how an aio stream ended (its status is only readable by awaiting)."""

    async def record() -> None:
        try:
            code = await rpc.code()
        except Exception:  # cancelled before a status: count it as a reset
            call.driver.observe(RESET)
            call.finish(grpc.StatusCode.CANCELLED)
            return
        call.ended(code, rpc, began)

    _keep(asyncio.get_running_loop().create_task(record()))


class AsyncMeshChannel(Factories, grpc.aio.Channel):  # type: ignore[misc]
    """A ``grpc.aio.Channel`` to a mesh service; create and use it on one event loop.

    Arguments as :class:`meshlib.integrations.grpc_client.MeshChannel`.
    """

    def __init__(
        self,
        service: str,
        *,
        mesh: MeshLike,
        options: Sequence[tuple[str, Any]] = (),
        idempotent_methods: Iterable[str] = (),
        grace: float = DEFAULT_GRACE,
    ) -> None:
        self._pending: set[asyncio.Future[Any]] = set()

        def retire(channel: Any) -> None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # pragma: no cover - channels are used on a loop
                return
            task = loop.create_task(channel.close(grace))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

        subchannels = SubChannels(
            tls=mesh.tls,
            make=lambda target, creds, opts: grpc.aio.secure_channel(target, creds, options=opts),
            retire=retire,
            options=options,
        )
        self._core = Core(service, mesh, subchannels, idempotent_methods)

    def multi_callable(self, kind: str, method: str, ser: Any, de: Any) -> Any:
        return _AioMulti(self._core, kind, method, ser, de)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """READY when some per-endpoint channel is ready, else IDLE."""
        for channel in self._core.subchannels.channels():
            if channel.get_state(try_to_connect) == grpc.ChannelConnectivity.READY:
                return grpc.ChannelConnectivity.READY
        return grpc.ChannelConnectivity.IDLE

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        raise NotImplementedError("a meshed channel has no single connectivity state")

    async def channel_ready(self) -> None:
        """Wait until a channel to one endpoint (picked as a call would be) is ready.

        Not a call: nothing is admitted, counted or traced.
        """
        destination = self._core.destination()
        plan = destination.service.route(GRPC_METHOD, "/grpc.health.v1.Health/Check", {})
        try:
            endpoint = destination.runtime.choose(plan, random.random())
        except RequestError as exc:
            raise rpc_error(exc) from exc
        channel = self._core.subchannels.get(endpoint.authority, destination.service.dns_name)
        await channel.channel_ready()

    async def close(self, grace: float | None = None) -> None:
        """Close every per-endpoint channel, letting calls finish for *grace* seconds."""
        channels = self._core.subchannels.drain()
        await asyncio.gather(*(c.close(grace) for c in channels), return_exceptions=True)
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def __aenter__(self) -> AsyncMeshChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close(None)
