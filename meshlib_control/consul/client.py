"""The py-consul client of ``--consul URL`` / ``--consul-token``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from meshlib.errors import ConfigError

__all__ = ["ConsulAddress", "make_client", "parse_consul_url"]

DEFAULT_TIMEOUT = 5.0  # seconds for one non-blocking request to the agent


@dataclass(frozen=True, slots=True)
class ConsulAddress:
    """Where the Consul agent's HTTP API is."""

    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_consul_url(value: str) -> ConsulAddress:
    """``http://host:8500`` → a :class:`ConsulAddress`, or ConfigError naming ``--consul``."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"--consul: {value!r}: the scheme must be http or https")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"--consul: {value!r}: {exc}") from exc
    if not parts.hostname:
        raise ConfigError(f"--consul: {value!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise ConfigError(f"--consul: {value!r}: give only scheme://host[:port]")
    return ConsulAddress(parts.scheme, parts.hostname, port or 8500)


def make_client(address: ConsulAddress, token: str | None) -> Any:
    """A py-consul client (``pip install 'inproc-mesh[consul]'``) for *address*.

    Raises:
        ConfigError: py-consul is not installed.
    """
    try:
        import consul
    except ImportError as exc:  # depends on the install: a clear start-up error, no traceback
        raise ConfigError("--consul needs py-consul: pip install 'inproc-mesh[consul]'") from exc
    return consul.Consul(
        host=address.host,
        port=address.port,
        scheme=address.scheme,
        token=token or None,
        connections_timeout=DEFAULT_TIMEOUT,
    )
