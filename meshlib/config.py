"""MeshConfig: the library's settings, from keyword arguments or ``MESH_*`` variables.

=====================  ===========================================  ====================
variable               meaning                                      default
=====================  ===========================================  ====================
MESH_CONTROL_URL       control service(s), ``https://host:port``,   (required to join)
                       or a comma list of replicas to fail over
                       between, tried in order
MESH_SERVICE           this workload's service name                 (required)
MESH_NAMESPACE         its namespace                                ``default``
MESH_TOKEN             join token for the first contact             (none: cache only)
MESH_DATA_DIR          cache of SVID and snapshot (0700)            ``~/.cache/meshlib/<ns>/<svc>``
MESH_LABELS            instance labels, ``version=v2,zone=b``       none
MESH_DEPENDENCIES      services this workload calls, ``a,b.ns``     all services
MESH_START_TIMEOUT     seconds ``start()`` waits                    30
MESH_ADVERTISE         address registered for this instance         the listen host
MESH_ADMIN_PORT        admin HTTP port on 127.0.0.1 (0: any free)   0
MESH_ACCESS_LOG        ``1``: JSON access log on ``meshlib.access``  off
=====================  ===========================================  ====================
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from meshlib.errors import ConfigError

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_START_TIMEOUT",
    "MeshConfig",
    "parse_control_urls",
    "parse_labels",
]

DEFAULT_START_TIMEOUT = 30.0
DEFAULT_HEARTBEAT_INTERVAL = 5.0
DEFAULT_WATCH_WAIT = 25.0

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_./]{0,61}[A-Za-z0-9])?$")
_HTTPS_URL = re.compile(r"^https://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][-A-Za-z0-9.]*)(:[0-9]{1,5})?$")


def _check_name(field_name: str, value: str) -> str:
    if not _LABEL.match(value):
        raise ConfigError(
            f"{field_name}: {value!r} is not a DNS label (lower-case letters, digits and '-', "
            "at most 63 characters)"
        )
    return value


def _parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not _LABEL_KEY.match(key):
            raise ConfigError(f"MESH_LABELS: {item!r} is not key=value")
        labels[key] = value
    return labels


def parse_control_urls(value: str | Sequence[str], source: str) -> tuple[str, ...]:
    """The control addresses of *value*: one ``https://`` URL, or a comma list of them.

    *value* is text (``https://a:7443,https://b:7443``) or a sequence of such texts (the
    repeated ``--control`` flag); *source* names where it came from in the errors
    (``MESH_CONTROL_URL``, ``control_url``, ``--control``). Trailing slashes are dropped.

    Raises:
        ConfigError: the list is empty, an entry is empty, is not ``https://host[:port]``,
            or repeats an earlier one; the message names *source* and the entry.
    """
    texts = [value] if isinstance(value, str) else list(value)
    entries = [part.strip() for text in texts for part in str(text).split(",")]
    if not any(entries):
        raise ConfigError(f"{source}: no control address given (expected https://host:port)")
    urls: list[str] = []
    for position, entry in enumerate(entries, 1):
        where = f"{source}: entry {position}"
        if not entry:
            raise ConfigError(f"{where} is empty (a stray comma?) in {', '.join(entries)!r}")
        if not entry.startswith("https://"):
            raise ConfigError(f"{where} {entry!r} must start with https://")
        url = entry.rstrip("/")
        match = _HTTPS_URL.match(url)
        if match is None or (match.group(2) and not 0 < int(match.group(2)[1:]) < 65536):
            raise ConfigError(f"{where} {entry!r} is not https://host[:port]")
        if url in urls:
            raise ConfigError(f"{where} {entry!r} repeats entry {urls.index(url) + 1}")
        urls.append(url)
    return tuple(urls)


def parse_labels(text: str) -> dict[str, str]:
    """Instance labels from ``key=value,key=value`` text, the form of ``MESH_LABELS``.

    Raises:
        ConfigError: an item is not ``key=value`` or its key is not a label key.
    """
    return _parse_labels(text)


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """Validated settings of one meshed workload.

    *control_url* may list several control replicas (a comma list, or a sequence of URLs);
    it is kept as the normalized comma list, and :attr:`control_urls` gives the entries.
    """

    service: str
    namespace: str = "default"
    control_url: str | Sequence[str] | None = None
    token: str | None = None
    data_dir: Path | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    dependencies: tuple[str, ...] | None = None
    start_timeout: float = DEFAULT_START_TIMEOUT
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    watch_wait: float = DEFAULT_WATCH_WAIT
    advertise: str | None = None
    admin_port: int | None = 0
    access_log: bool = False

    def __post_init__(self) -> None:
        if self.admin_port is not None and not 0 <= self.admin_port <= 65535:
            raise ConfigError("admin_port: must be 0..65535 (0 picks a free port), or None")
        _check_name("service", self.service)
        _check_name("namespace", self.namespace)
        if self.control_url is not None:
            urls = parse_control_urls(self.control_url, "control_url")
            object.__setattr__(self, "control_url", ",".join(urls))
        if self.start_timeout <= 0:
            raise ConfigError("start_timeout: must be > 0")
        if self.heartbeat_interval <= 0:
            raise ConfigError("heartbeat_interval: must be > 0")
        for key in self.labels:
            if not _LABEL_KEY.match(key):
                raise ConfigError(f"labels: {key!r} is not a valid label key")
        for dep in self.dependencies or ():
            for part in dep.split("."):
                _check_name("dependencies", part)

    @property
    def control_urls(self) -> tuple[str, ...]:
        """The control addresses, in order of preference (empty when none is set)."""
        if self.control_url is None:
            return ()
        return parse_control_urls(self.control_url, "control_url")

    @property
    def cache_dir(self) -> Path:
        """Where the SVID and the last good snapshot are kept."""
        if self.data_dir is not None:
            return self.data_dir
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return base / "meshlib" / self.namespace / self.service

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> MeshConfig:
        """Read ``MESH_*`` variables; keyword *overrides* win over the environment."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if "MESH_SERVICE" in env:
            values["service"] = env["MESH_SERVICE"]
        if "MESH_NAMESPACE" in env:
            values["namespace"] = env["MESH_NAMESPACE"]
        if env.get("MESH_CONTROL_URL"):
            # Validated here so that the errors name the variable, not the field.
            urls = parse_control_urls(env["MESH_CONTROL_URL"], "MESH_CONTROL_URL (control_url)")
            values["control_url"] = ",".join(urls)
        if env.get("MESH_TOKEN"):
            values["token"] = env["MESH_TOKEN"]
        if env.get("MESH_DATA_DIR"):
            values["data_dir"] = Path(env["MESH_DATA_DIR"])
        if env.get("MESH_LABELS"):
            values["labels"] = _parse_labels(env["MESH_LABELS"])
        if env.get("MESH_DEPENDENCIES"):
            values["dependencies"] = tuple(
                d.strip() for d in env["MESH_DEPENDENCIES"].split(",") if d.strip()
            )
        if env.get("MESH_ADVERTISE"):
            values["advertise"] = env["MESH_ADVERTISE"]
        if env.get("MESH_ADMIN_PORT"):
            try:
                values["admin_port"] = int(env["MESH_ADMIN_PORT"])
            except ValueError:
                raise ConfigError("MESH_ADMIN_PORT: must be a port number") from None
        if env.get("MESH_ACCESS_LOG"):
            values["access_log"] = env["MESH_ACCESS_LOG"].lower() in ("1", "true", "yes", "on")
        if env.get("MESH_START_TIMEOUT"):
            try:
                values["start_timeout"] = float(env["MESH_START_TIMEOUT"])
            except ValueError:
                raise ConfigError("MESH_START_TIMEOUT: must be a number of seconds") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values.get("data_dir"), str):
            values["data_dir"] = Path(str(values["data_dir"]))
        if "service" not in values:
            raise ConfigError("MESH_SERVICE: required (the name of this workload's service)")
        return cls(**values)  # type: ignore[arg-type]
