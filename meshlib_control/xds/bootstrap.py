"""PURE: the bootstrap a sidecar's Envoy starts from, and the SDS files of its secrets.

The bootstrap holds only what Envoy needs before it can talk to the control service: who it
is (``node``, with the ports and the secrets dir in ``node.metadata``, which the ADS server
reads back), where its admin page is (127.0.0.1 only), and the ADS cluster, reached over
mTLS with the workload's own SVID and checked against the control service's SPIFFE ID.
Everything else arrives over ADS. With several control replicas, the ADS cluster lists each
one's ADS server at its own priority, in the order given (the library's failover order):
Envoy opens its ADS stream to the first priority with a host not ejected and keeps it until
it breaks. A replica whose connection fails (refused, reset, timed out) is ejected (outlier
detection on local-origin errors, ``EJECTION_TIME`` doubling to 60 s), so the reconnection
(backoff ``ADS_RETRY_BASE`` to ``ADS_RETRY_MAX``) goes to the next priority. Certificates
come from files the agent writes (0600) and Envoy watches (``path_config_source`` +
``watched_directory``): the private key never leaves the host, and a rotation is one
atomic rename.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meshlib_control.xds.clusters import is_ip
from meshlib_control.xds.translate import (
    BUNDLE_SECRET_FILE,
    SVID_SECRET_FILE,
    TYPE_URLS,
    SidecarNode,
    sds_secret_config,
)

__all__ = ["XDS_CLUSTER", "secret_files", "sidecar_bootstrap"]

Json = dict[str, Any]

XDS_CLUSTER = "xds_cluster"
STATS_FLUSH_INTERVAL = "1s"
ADS_RETRY_BASE = "0.25s"  # Envoy's default is 0.5 s, growing to 30 s
ADS_RETRY_MAX = "5s"
EJECTION_TIME = "5s"  # a control replica that refused a connection is skipped this long
_UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _node_metadata(node: SidecarNode) -> Json:
    meta: Json = {
        "namespace": node.namespace,
        "inboundPort": node.inbound_port,
        "appPort": node.app_port,
        "outboundPort": node.outbound_port,
        "inboundAddress": node.inbound_address,
    }
    if node.zone is not None:
        meta["zone"] = node.zone
    if node.secrets_dir is not None:
        meta["secretsDir"] = node.secrets_dir
    return meta


def sidecar_bootstrap(
    *,
    node_id: str,
    node: SidecarNode,
    admin_port: int,
    control_spiffe_id: str,
    xds_addresses: Sequence[tuple[str, int]] = (),
    xds_host: str | None = None,
    xds_port: int | None = None,
) -> Json:
    """The Envoy bootstrap of one sidecar (a dict in Envoy's field names).

    Args:
        xds_addresses: ``(host, port)`` of each control replica's ADS server, in order of
            preference; or one as *xds_host* and *xds_port*.

    Raises:
        ValueError: *node* has no ``secrets_dir`` (the ADS connection needs the SVID files),
            or no ADS address is given.
    """
    if node.secrets_dir is None:
        raise ValueError("node.secrets_dir: required for a sidecar bootstrap")
    addresses = list(xds_addresses)
    if xds_host is not None and xds_port is not None:
        addresses.insert(0, (xds_host, xds_port))
    if not addresses:
        raise ValueError("xds_addresses: at least one ADS server is required")
    ads = {"ads": {}, "resource_api_version": "V3"}
    tls = {
        "@type": _UPSTREAM_TLS,
        "common_tls_context": {
            "tls_certificate_sds_secret_configs": [
                sds_secret_config(node.spiffe_id, node.secrets_dir, SVID_SECRET_FILE)
            ],
            "combined_validation_context": {
                "default_validation_context": {
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": control_spiffe_id}}
                    ]
                },
                "validation_context_sds_secret_config": sds_secret_config(
                    node.bundle_secret, node.secrets_dir, BUNDLE_SECRET_FILE
                ),
            },
            "alpn_protocols": ["h2"],
        },
    }
    return {
        "node": {"id": node_id, "cluster": node.service, "metadata": _node_metadata(node)},
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        # Envoy publishes histogram values at each flush (default 5 s): flush more often than
        # the control service scrapes (5 s by default) so every scrape window sees its traffic.
        "stats_flush_interval": STATS_FLUSH_INTERVAL,
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [
                    {
                        "envoy_grpc": {
                            "cluster_name": XDS_CLUSTER,
                            "retry_policy": {
                                "retry_back_off": {
                                    "base_interval": ADS_RETRY_BASE,
                                    "max_interval": ADS_RETRY_MAX,
                                }
                            },
                        }
                    }
                ],
            },
            "cds_config": ads,
            "lds_config": dict(ads),
        },
        "static_resources": {"clusters": [_xds_cluster(addresses, tls)]},
    }


def _xds_cluster(addresses: list[tuple[str, int]], tls: Json) -> Json:
    """The ADS cluster: one priority per control replica, health-checked when several."""
    cluster: Json = {
        "name": XDS_CLUSTER,
        "type": "STATIC" if all(is_ip(host) for host, _ in addresses) else "STRICT_DNS",
        "connect_timeout": "1s",
        # gRPC needs HTTP/2; without it nothing reaches the ADS server (notes §2).
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [
                {
                    "priority": priority,
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": host, "port_value": port}}
                            }
                        }
                    ],
                }
                for priority, (host, port) in enumerate(addresses)
            ],
        },
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
    }
    if len(addresses) > 1:
        # Passive: a replica that refuses or times out a connection is ejected at once for
        # EJECTION_TIME (doubling while it keeps failing), so the next reconnection goes to
        # the next priority. Nothing is sent to replicas while they work: no health-check
        # handshakes from every sidecar to every replica.
        cluster["outlier_detection"] = {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 1,
            "enforcing_consecutive_local_origin_failure": 100,
            "interval": "1s",
            "base_ejection_time": EJECTION_TIME,
            "max_ejection_time": "60s",
            "max_ejection_percent": 100,
        }
    return cluster


def secret_files(
    node: SidecarNode, *, certificate_chain: str, private_key: str, trust_bundle: str
) -> dict[str, Json]:
    """The contents of the two SDS files (file name → JSON document, valid YAML too)."""
    secret = TYPE_URLS["secrets"]
    return {
        SVID_SECRET_FILE: {
            "resources": [
                {
                    "@type": secret,
                    "name": node.spiffe_id,
                    "tls_certificate": {
                        "certificate_chain": {"inline_string": certificate_chain},
                        "private_key": {"inline_string": private_key},
                    },
                }
            ]
        },
        BUNDLE_SECRET_FILE: {
            "resources": [
                {
                    "@type": secret,
                    "name": node.bundle_secret,
                    "validation_context": {"trusted_ca": {"inline_string": trust_bundle}},
                }
            ]
        },
    }
