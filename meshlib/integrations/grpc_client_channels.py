"""Real gRPC channels per endpoint, for the SVID in force, retired after a grace period."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from meshlib.identity.svid import SVID
from meshlib.identity.tls import TLSContexts
from meshlib.policy.engine import CompiledService

try:
    import grpc  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("meshlib's gRPC needs grpcio: pip install 'inproc-mesh[grpc]'") from exc

__all__ = ["SubChannels", "retire_later"]


class SubChannels:
    """Real channels per endpoint authority, built for the SVID in force when first used."""

    def __init__(
        self,
        *,
        tls: TLSContexts,
        make: Callable[[str, Any, Sequence[tuple[str, Any]]], Any],
        retire: Callable[[Any], None],
        options: Sequence[tuple[str, Any]],
    ) -> None:
        self._tls = tls
        self._make = make
        self._retire = retire
        self._options = tuple(options)
        self._entries: dict[str, tuple[SVID, Any]] = {}
        self._credentials: tuple[SVID, Any] | None = None
        self._lock = threading.Lock()

    def _creds(self, svid: SVID) -> Any:
        cached = self._credentials
        if cached is not None and cached[0] is svid:
            return cached[1]
        creds = grpc.ssl_channel_credentials(
            root_certificates=svid.bundle_pem,
            private_key=svid.key_pem,
            certificate_chain=svid.cert_chain_pem,
        )
        self._credentials = (svid, creds)
        return creds

    def get(self, authority: str, dns_name: str) -> Any:
        svid = self._tls.svid
        entry = self._entries.get(authority)
        if entry is not None and entry[0] is svid:
            return entry[1]
        with self._lock:
            entry = self._entries.get(authority)
            if entry is not None and entry[0] is svid:
                return entry[1]
            options = (
                ("grpc.ssl_target_name_override", dns_name),
                ("grpc.default_authority", dns_name),
                *self._options,
            )
            channel = self._make(authority, self._creds(svid), options)
            self._entries[authority] = (svid, channel)
        if entry is not None:
            self._retire(entry[1])  # the previous SVID's channel: closed after the grace
        return channel

    def sweep(self, service: CompiledService) -> None:
        """Retire channels to endpoints *service* no longer lists (once per installed view)."""
        live = {e.authority for e in service.endpoints}
        with self._lock:
            gone = [a for a in self._entries if a not in live]
            retired = [self._entries.pop(a)[1] for a in gone]
        for channel in retired:
            self._retire(channel)

    def drain(self) -> list[Any]:
        with self._lock:
            channels = [channel for _, channel in self._entries.values()]
            self._entries.clear()
        return channels

    def channels(self) -> list[Any]:
        return [channel for _, channel in list(self._entries.values())]


def retire_later(grace: float) -> Callable[[Any], None]:
    def retire(channel: Any) -> None:
        timer = threading.Timer(grace, channel.close)
        timer.daemon = True
        timer.start()

    return retire
