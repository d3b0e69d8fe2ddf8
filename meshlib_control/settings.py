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
    "StoreSpec",
    "parse_store",
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

# Per-identity quotas (docs/operations.md, "Quotas"): one workload must not grow every
# other workload's snapshot nor slow every state change.
DEFAULT_MAX_LABELS = 32  # labels per instance
DEFAULT_MAX_LABEL_KEY_BYTES = 128
DEFAULT_MAX_LABEL_VALUE_BYTES = 256
DEFAULT_MAX_LABELS_BYTES = 4096  # all keys and values of one instance, UTF-8
DEFAULT_MAX_INSTANCES_PER_IDENTITY = 256  # live registrations
DEFAULT_MAX_OWNED_IDS_PER_IDENTITY = 4096  # instance ids reserved for an identity
DEFAULT_MAX_WATCH_KEYS_PER_IDENTITY = 16  # distinct `deps` sets watched at once
DEFAULT_MAX_DEPS = 256  # services named in one `deps`
DEFAULT_SCRAPE_MAX_BYTES = 8 * 1024 * 1024  # one admin page read by the observer


def split_hostport(value: str, flag: str) -> tuple[str, int]:
    """``"127.0.0.1:7443"`` → ``("127.0.0.1", 7443)``, or ConfigError naming *flag*."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{flag}: {value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class StoreSpec:
    """Where the state lives: ``sqlite`` (a file) or ``etcd`` (members and key prefix)."""

    backend: str
    path: Path | None = None
    endpoints: tuple[str, ...] = ()
    prefix: str = "/meshlib/"
    tls: tuple[Path, Path, Path] | None = None  # etcds://: CA bundle, client cert, client key


_TLS_PARAMS = ("ca", "cert", "key")


def _store_tls(query: str) -> tuple[Path, Path, Path]:
    """``ca=…&cert=…&key=…`` of an ``etcds://`` URL: three readable absolute paths."""
    from urllib.parse import parse_qs

    params = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(params) - set(_TLS_PARAMS))
    if unknown:
        raise ConfigError(
            f"--store: unknown parameter {unknown[0]!r} (etcds:// takes ca, cert, key)"
        )
    paths = []
    for name in _TLS_PARAMS:
        values = params.get(name)
        if not values or len(values) != 1 or not values[0].startswith("/"):
            raise ConfigError(f"--store: etcds:// needs {name}=ABSOLUTE_PATH (PEM), once")
        path = Path(values[0])
        if not path.is_file():
            raise ConfigError(f"--store: {name}={path}: no such file")
        paths.append(path)
    return paths[0], paths[1], paths[2]


def parse_store(value: str | None, data_dir: Path) -> StoreSpec:
    """``--store``: ``etcd://h:p[,h:p…][/prefix]``, the same as ``etcds://…?ca=&cert=&key=``
    (TLS with a client certificate), ``sqlite:///path``; None: the data dir's.

    Raises:
        ConfigError: naming ``--store`` and what is wrong.
    """
    if value is None:
        return StoreSpec("sqlite", path=data_dir / "mesh.db")
    scheme, sep, rest = value.partition("://")
    if not sep:
        raise ConfigError(f"--store: {value!r} is not etcd://HOST:PORT[,…] or sqlite:///PATH")
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ConfigError(f"--store: {value!r}: sqlite:///PATH needs an absolute path")
        return StoreSpec("sqlite", path=Path(rest))
    if scheme not in ("etcd", "etcds"):
        raise ConfigError(f"--store: scheme {scheme!r} is not etcd, etcds or sqlite")
    rest, question, query = rest.partition("?")
    if question and scheme == "etcd":
        raise ConfigError("--store: parameters (ca, cert, key) belong to etcds://, not etcd://")
    tls = _store_tls(query) if scheme == "etcds" else None
    members, slash, prefix = rest.partition("/")
    endpoints = tuple(m.strip() for m in members.split(","))
    for endpoint in endpoints:
        split_hostport(endpoint, "--store")
    if slash and (not prefix or not all(c.isalnum() or c in "-_/." for c in prefix)):
        raise ConfigError(f"--store: key prefix {prefix!r}: letters, digits, -_./ only")
    chosen = f"/{prefix.strip('/')}/" if slash else "/meshlib/"
    return StoreSpec("etcd", endpoints=endpoints, prefix=chosen, tls=tls)


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
    max_labels: int = DEFAULT_MAX_LABELS
    max_label_key_bytes: int = DEFAULT_MAX_LABEL_KEY_BYTES
    max_label_value_bytes: int = DEFAULT_MAX_LABEL_VALUE_BYTES
    max_labels_bytes: int = DEFAULT_MAX_LABELS_BYTES
    max_instances_per_identity: int = DEFAULT_MAX_INSTANCES_PER_IDENTITY
    max_owned_ids_per_identity: int = DEFAULT_MAX_OWNED_IDS_PER_IDENTITY
    max_watch_keys_per_identity: int = DEFAULT_MAX_WATCH_KEYS_PER_IDENTITY
    max_deps: int = DEFAULT_MAX_DEPS
    scrape_max_bytes: int = DEFAULT_SCRAPE_MAX_BYTES
    store: str | None = None  # --store; None: SQLite in the data dir
    consul: str | None = None  # --consul URL (CONSUL_HTTP_ADDR); None: no Consul export
    consul_token: str | None = None  # --consul-token (CONSUL_HTTP_TOKEN)

    @property
    def store_spec(self) -> StoreSpec:
        """The parsed ``--store``."""
        return parse_store(self.store, self.data_dir)

    def __post_init__(self) -> None:
        split_hostport(self.listen, "--listen")
        spec = self.store_spec
        if spec.backend == "etcd" and self.ca_cert is None:
            # Replicas that each made their own CA would each sign for a different root.
            raise ConfigError(
                "--store etcd://: give --ca-cert and --ca-key (every replica signs under "
                "the same trust bundle; see docs/operations.md, High availability)"
            )
        if self.xds_listen is not None:
            split_hostport(self.xds_listen, "--xds-listen")
        if self.consul is not None:
            from meshlib_control.consul.client import parse_consul_url

            parse_consul_url(self.consul)
        if (self.ca_cert is None) != (self.ca_key is None):
            raise ConfigError("--ca-cert and --ca-key: give both or neither")
        if self.svid_ttl <= timedelta(0):
            raise ConfigError("--svid-ttl: must be > 0")
        if self.instance_ttl <= timedelta(0):
            raise ConfigError("--instance-ttl: must be > 0")
        if self.rebootstrap_ttl <= timedelta(0):
            raise ConfigError("--rebootstrap-ttl: must be > 0")
        for flag, value, low, high in (
            ("--max-labels", self.max_labels, 0, 10_000),
            ("--max-label-key-bytes", self.max_label_key_bytes, 1, 1 << 20),
            ("--max-label-value-bytes", self.max_label_value_bytes, 0, 1 << 20),
            ("--max-labels-bytes", self.max_labels_bytes, 0, 1 << 24),
            ("--max-instances-per-identity", self.max_instances_per_identity, 1, 1_000_000),
            ("--max-owned-ids-per-identity", self.max_owned_ids_per_identity, 1, 10_000_000),
            ("--max-watch-keys-per-identity", self.max_watch_keys_per_identity, 1, 100_000),
            ("--max-deps", self.max_deps, 1, 100_000),
            ("--scrape-max-bytes", self.scrape_max_bytes, 1024, 1 << 30),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{flag}: must be an integer {low}..{high}, got {value!r}")
        if self.max_owned_ids_per_identity < self.max_instances_per_identity:
            raise ConfigError(
                "--max-owned-ids-per-identity: must be >= --max-instances-per-identity"
            )
