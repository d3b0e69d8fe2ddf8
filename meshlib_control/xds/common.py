"""What the parts of the translator share: Envoy's names, the node, the result, small builders.

* resource names and type URLs: :data:`TYPE_URLS` and the ``@type`` of every Envoy extension
  the translation uses, in one table;
* :class:`SidecarNode` (who the translation is for), :class:`EnvoyResources` (what it gives),
  :func:`cluster_name`;
* :class:`Notes`, the list of unsupported fields being collected, and the converters both
  directions use (durations, regex and ``:method`` matchers);
* the pieces both listeners and clusters are built from: SDS secret references, the common
  TLS context, socket addresses, the HTTP connection manager, upstream protocol options.

PURE like the rest of :mod:`meshlib_control.xds.translate`; every builder returns fresh dicts,
which callers may mutate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from meshlib.policy.model import TrafficPolicySpec
from meshlib.policy.snapshot import ServiceEntry
from meshlib_control.xds.unsupported import Unsupported

__all__ = [
    "BUNDLE_SECRET_FILE",
    "CONNECT_TIMEOUT",
    "DOWNSTREAM_TLS",
    "FAULT",
    "FAULT_FILTER",
    "INBOUND_LISTENER",
    "INBOUND_ROUTES",
    "LOCAL_APP_CLUSTER",
    "LOCAL_RATELIMIT",
    "OUTBOUND_LISTENER",
    "OUTBOUND_ROUTES",
    "RBAC",
    "SVID_SECRET_FILE",
    "TLS_INSPECTOR",
    "TYPE_URLS",
    "UPSTREAM_TLS",
    "EnvoyResources",
    "Json",
    "Notes",
    "SidecarNode",
    "address",
    "ads",
    "cluster_name",
    "common_tls",
    "duration",
    "entry_path",
    "entry_policy",
    "hcm",
    "methods_header",
    "protocol_options",
    "regex_matcher",
    "sds_secret_config",
]

Json: TypeAlias = dict[str, Any]

INBOUND_LISTENER = "inbound"
OUTBOUND_LISTENER = "outbound"
INBOUND_ROUTES = "inbound"
OUTBOUND_ROUTES = "outbound"
LOCAL_APP_CLUSTER = "inbound|app"
CONNECT_TIMEOUT = "5s"
"""Envoy's default, spelled out; the library has no separate connect timeout (the call's
deadline bounds the connect)."""

TYPE_URLS = {
    "listeners": "type.googleapis.com/envoy.config.listener.v3.Listener",
    "routes": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    "clusters": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "endpoints": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    "secrets": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
}

_T = "type.googleapis.com/envoy.extensions."
_HCM = _T + "filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = _T + "filters.http.router.v3.Router"
RBAC = _T + "filters.http.rbac.v3.RBAC"
FAULT = _T + "filters.http.fault.v3.HTTPFault"
LOCAL_RATELIMIT = _T + "filters.http.local_ratelimit.v3.LocalRateLimit"
TLS_INSPECTOR = _T + "filters.listener.tls_inspector.v3.TlsInspector"
DOWNSTREAM_TLS = _T + "transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS = _T + "transport_sockets.tls.v3.UpstreamTlsContext"
_HTTP_OPTIONS = _T + "upstreams.http.v3.HttpProtocolOptions"
_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
FAULT_FILTER = "envoy.filters.http.fault"
SVID_SECRET_FILE = "svid.yaml"
BUNDLE_SECRET_FILE = "bundle.yaml"


def ads() -> Json:
    """A fresh ConfigSource (``ads``): callers may mutate what we return."""
    return {"ads": {}, "resource_api_version": "V3"}


@dataclass(frozen=True, slots=True)
class SidecarNode:
    """The sidecar a translation is for.

    Attributes:
        service, namespace, trust_domain: the workload's identity (must equal the
            snapshot's).
        inbound_port: where the sidecar accepts mesh traffic (mTLS).
        app_port: the application's plaintext port on 127.0.0.1.
        outbound_port: where the application sends its outgoing calls (127.0.0.1).
        inbound_address: the inbound listener's address.
        zone: this workload's ``zone`` label: same-zone endpoints are preferred, as the
            library does.
        secrets_dir: where the sidecar agent keeps the SDS files of the SVID and the trust
            bundle (:data:`SVID_SECRET_FILE`, :data:`BUNDLE_SECRET_FILE`); Envoy watches the
            directory and picks up a rotation on the next handshake. None: the secrets are
            expected over ADS (what the static rendering for validation uses).
    """

    service: str
    namespace: str
    trust_domain: str
    inbound_port: int
    app_port: int
    outbound_port: int
    inbound_address: str = "0.0.0.0"
    zone: str | None = None
    secrets_dir: str | None = None

    @property
    def spiffe_id(self) -> str:
        """The workload's SPIFFE ID: also the name of its SVID secret."""
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service}"

    @property
    def bundle_secret(self) -> str:
        """The name of the trust bundle secret: the trust domain's own ID."""
        return f"spiffe://{self.trust_domain}"


@dataclass(frozen=True, slots=True)
class EnvoyResources:
    """One sidecar's Envoy resources, in Envoy's JSON field names.

    Attributes:
        version: the snapshot version they were translated from.
        listeners, routes, clusters, endpoints: Listener, RouteConfiguration, Cluster and
            ClusterLoadAssignment dicts (no ``@type`` at the top level).
        secret_names: the SDS secrets referenced (the SVID, then the trust bundle).
        unsupported: policy fields the sidecar does not honour exactly.
    """

    version: str
    listeners: tuple[Json, ...]
    routes: tuple[Json, ...]
    clusters: tuple[Json, ...]
    endpoints: tuple[Json, ...]
    secret_names: tuple[str, ...]
    unsupported: tuple[Unsupported, ...] = field(default=())


def cluster_name(service: str, namespace: str, subset: str | None = None) -> str:
    """``outbound|<svc>.<ns>`` for every endpoint, ``outbound|<svc>.<ns>|<subset>``."""
    base = f"outbound|{service}.{namespace}"
    return base if subset is None else f"{base}|{subset}"


# --- small converters ----------------------------------------------------------------------


def duration(seconds: float) -> str:
    """*seconds* as a protobuf Duration string (``"0.25s"``), exact to the nanosecond."""
    nanos = round(seconds * 1_000_000_000)
    whole, frac = divmod(nanos, 1_000_000_000)
    return f"{whole}s" if frac == 0 else f"{whole}.{frac:09d}".rstrip("0") + "s"


class Notes:
    """Collects :class:`Unsupported` entries once each, in the order they were found."""

    def __init__(self) -> None:
        self._items: dict[Unsupported, None] = {}

    def add(self, path: str, kind: Literal["mapped", "partial", "ignored"], reason: str) -> None:
        """Record that the field at *path* is *kind* on the sidecar, and why."""
        self._items.setdefault(Unsupported(path, kind, reason))

    def result(self) -> tuple[Unsupported, ...]:
        """Everything recorded, without repeats."""
        return tuple(self._items)


def regex_matcher(regex: str) -> Json:
    """A StringMatcher for the RE2 *regex* (full match)."""
    return {"safe_regex": {"regex": regex}}


def methods_header(methods: Iterable[str]) -> Json:
    """A HeaderMatcher on ``:method`` for any of *methods*."""
    listed = sorted(methods)
    if len(listed) == 1:
        return {"name": ":method", "string_match": {"exact": listed[0]}}
    return {"name": ":method", "string_match": regex_matcher("|".join(listed))}


# --- building blocks of listeners and clusters ---------------------------------------------


def _router() -> Json:
    return {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}


def hcm(stat_prefix: str, routes: str, filters: list[Json], *, xfcc: str | None) -> Json:
    """An HTTP connection manager: *filters*, then the router, on route configuration *routes*.

    *xfcc* is its ``forward_client_cert_details`` (``SANITIZE_SET`` also sets the URI).
    """
    config: Json = {
        "@type": _HCM,
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "rds": {"route_config_name": routes, "config_source": ads()},
        "http_filters": [*filters, _router()],
        "normalize_path": True,
    }
    if xfcc == "SANITIZE_SET":
        config["forward_client_cert_details"] = "SANITIZE_SET"
        config["set_current_client_cert_details"] = {"uri": True}
    elif xfcc is not None:
        config["forward_client_cert_details"] = xfcc
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": config}


def sds_secret_config(name: str, secrets_dir: str | None, filename: str) -> Json:
    """A reference to the secret *name*: a watched local file, or ADS without *secrets_dir*.

    The private key never leaves the sidecar's host: the control service does not have it,
    the agent writes it (0600) and Envoy reads it from the file.
    """
    if secrets_dir is None:
        return {"name": name, "sds_config": ads()}
    return {
        "name": name,
        "sds_config": {
            "path_config_source": {
                "path": f"{secrets_dir}/{filename}",
                "watched_directory": {"path": secrets_dir},
            },
            "resource_api_version": "V3",
        },
    }


def common_tls(node: SidecarNode, san: Json) -> Json:
    """The node's SVID and trust bundle over SDS; the peer's URI SAN must match *san*."""
    svid = sds_secret_config(node.spiffe_id, node.secrets_dir, SVID_SECRET_FILE)
    bundle = sds_secret_config(node.bundle_secret, node.secrets_dir, BUNDLE_SECRET_FILE)
    return {
        "tls_certificate_sds_secret_configs": [svid],
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": san}]
            },
            "validation_context_sds_secret_config": bundle,
        },
    }


def address(host: str, port: int) -> Json:
    """A socket address."""
    return {"socket_address": {"address": host, "port_value": port}}


def protocol_options() -> Json:
    """Upstream HTTP options: HTTP/1.1 in → HTTP/1.1 out, HTTP/2 (gRPC) in → HTTP/2 out."""
    return {
        _HTTP_OPTIONS_KEY: {
            "@type": _HTTP_OPTIONS,
            "use_downstream_protocol_config": {
                "http_protocol_options": {},
                "http2_protocol_options": {},
            },
        }
    }


def entry_policy(entry: ServiceEntry) -> TrafficPolicySpec:
    """The TrafficPolicy spec of *entry*, or the defaults when it has none."""
    if entry.traffic_policy is not None and isinstance(
        entry.traffic_policy.spec, TrafficPolicySpec
    ):
        return entry.traffic_policy.spec
    return TrafficPolicySpec(service=entry.name)


def entry_path(entry: ServiceEntry) -> str:
    """Where *entry*'s policy is, as a note's path: ``services[<svc>.<ns>].spec``."""
    return f"services[{entry.name}.{entry.namespace}].spec"
