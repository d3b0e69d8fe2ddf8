"""Settings of one control service (from ``meshctl control serve`` flags)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from meshlib.errors import ConfigError

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_TRUST_DOMAIN",
    "DEFAULT_XDS_LISTEN",
    "Settings",
    "split_hostport",
]

DEFAULT_LISTEN = "127.0.0.1:7443"
DEFAULT_XDS_LISTEN = "127.0.0.1:18000"
DEFAULT_TRUST_DOMAIN = "mesh.local"
DEFAULT_SVID_TTL = timedelta(hours=24)
DEFAULT_INSTANCE_TTL = timedelta(seconds=15)
DEFAULT_REBOOTSTRAP_TTL = timedelta(days=7)
CONTROL_CERT_TTL = timedelta(days=30)
ADMIN_CERT_TTL = timedelta(days=365)


def split_hostport(value: str, flag: str) -> tuple[str, int]:
    """``"127.0.0.1:7443"`` → ``("127.0.0.1", 7443)``, or ConfigError naming *flag*."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{flag}: {value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated control-service settings."""

    data_dir: Path = Path(".mesh")
    listen: str = DEFAULT_LISTEN
    xds_listen: str | None = None
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    ca_cert: Path | None = None
    ca_key: Path | None = None
    svid_ttl: timedelta = DEFAULT_SVID_TTL
    instance_ttl: timedelta = DEFAULT_INSTANCE_TTL
    rebootstrap_ttl: timedelta = DEFAULT_REBOOTSTRAP_TTL

    def __post_init__(self) -> None:
        split_hostport(self.listen, "--listen")
        if self.xds_listen is not None:
            split_hostport(self.xds_listen, "--xds-listen")
        if (self.ca_cert is None) != (self.ca_key is None):
            raise ConfigError("--ca-cert and --ca-key: give both or neither")
        if self.svid_ttl <= timedelta(0):
            raise ConfigError("--svid-ttl: must be > 0")
        if self.instance_ttl <= timedelta(0):
            raise ConfigError("--instance-ttl: must be > 0")
        if self.rebootstrap_ttl <= timedelta(0):
            raise ConfigError("--rebootstrap-ttl: must be > 0")
