"""PURE translator: one workload's :class:`~meshlib.policy.snapshot.Snapshot` → Envoy v3.

The output is plain dicts with Envoy's JSON/YAML field names (what ``json_format.ParseDict``
and ``envoy -c`` accept), so this module needs neither protobuf nor Envoy. Same snapshot and
node → equal dicts, in the same order: no I/O, no clock, no randomness.

Resources for one sidecar (the names are constants in :mod:`~meshlib_control.xds.common`):

* listener ``inbound`` (``node.inbound_address:inbound_port``): mTLS with the node's SVID
  (SDS), client certificates of the trust domain required, XFCC set for the app, RBAC from
  the AuthorizationPolicies (a DENY filter before an ALLOW one), local rate limit, routed to
  cluster ``inbound|app`` (``127.0.0.1:app_port``). PERMISSIVE adds a plaintext filter chain
  selected by ``tls_inspector``.
* listener ``outbound`` (``127.0.0.1:outbound_port``): route configuration ``outbound``, one
  virtual host per service, the TrafficPolicy routes, then the implicit ``default`` route.
* clusters ``outbound|<svc>.<ns>`` and ``outbound|<svc>.<ns>|<subset>`` (EDS over ADS, mTLS
  checking the service's exact SPIFFE ID) and one ClusterLoadAssignment for each.

Whatever Envoy cannot do exactly as the library does is listed in
:attr:`EnvoyResources.unsupported` (DESIGN.md invariant 5); ``docs/sidecar.md`` has the
field-by-field matrix.

The parts: :mod:`~meshlib_control.xds.inbound` builds the first item,
:mod:`~meshlib_control.xds.outbound` the other two, from what
:mod:`~meshlib_control.xds.common` shares (names, :class:`SidecarNode`,
:class:`EnvoyResources`, converters, TLS and HTTP building blocks). This module puts them
together and re-exports the names other modules import from it.
"""

from __future__ import annotations

from meshlib.errors import ConfigError
from meshlib.policy.snapshot import Snapshot
from meshlib_control.xds.common import (
    BUNDLE_SECRET_FILE,
    CONNECT_TIMEOUT,
    INBOUND_LISTENER,
    INBOUND_ROUTES,
    LOCAL_APP_CLUSTER,
    OUTBOUND_LISTENER,
    OUTBOUND_ROUTES,
    SVID_SECRET_FILE,
    TYPE_URLS,
    EnvoyResources,
    Json,
    Notes,
    SidecarNode,
    cluster_name,
    sds_secret_config,
)
from meshlib_control.xds.inbound import (
    glob_to_re2,
    inbound_listener,
    inbound_routes,
    local_app_cluster,
)
from meshlib_control.xds.outbound import (
    IDEMPOTENT_METHODS,
    outbound_clusters,
    outbound_listener,
    outbound_routes,
)

__all__ = [
    "BUNDLE_SECRET_FILE",
    "CONNECT_TIMEOUT",
    "IDEMPOTENT_METHODS",
    "INBOUND_LISTENER",
    "INBOUND_ROUTES",
    "LOCAL_APP_CLUSTER",
    "OUTBOUND_LISTENER",
    "OUTBOUND_ROUTES",
    "SVID_SECRET_FILE",
    "TYPE_URLS",
    "EnvoyResources",
    "Json",
    "SidecarNode",
    "cluster_name",
    "glob_to_re2",
    "sds_secret_config",
    "translate",
]


def translate(snapshot: Snapshot, *, node: SidecarNode) -> EnvoyResources:
    """Translate *snapshot* into the Envoy resources of the sidecar *node*.

    Raises:
        ConfigError: *node* is not the workload the snapshot was built for.
    """
    got = (snapshot.service, snapshot.namespace, snapshot.trust_domain)
    want = (node.service, node.namespace, node.trust_domain)
    if got != want:
        raise ConfigError(f"snapshot is for {'/'.join(got)}, the sidecar node is {'/'.join(want)}")
    notes = Notes()
    inbound = inbound_listener(snapshot, node, notes)
    routes = outbound_routes(snapshot, notes)
    clusters, assignments = outbound_clusters(snapshot, node, notes)
    return EnvoyResources(
        version=snapshot.version,
        listeners=(inbound, outbound_listener(node)),
        routes=(inbound_routes(), routes),
        clusters=(local_app_cluster(node), *clusters),
        endpoints=tuple(assignments),
        secret_names=(node.spiffe_id, node.bundle_secret),
        unsupported=notes.result(),
    )
