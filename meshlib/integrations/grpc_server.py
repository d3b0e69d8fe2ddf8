"""gRPC servers in the mesh: rotating mTLS credentials and the inbound-policy interceptors.

What :class:`meshlib.integrations.asgi.MeshMiddleware` does for HTTP, the interceptors
(:mod:`meshlib.integrations.grpc_server_interceptors`) do for gRPC, with the same
:class:`meshlib.inbound.Admission` deciding, in this order:

1. peer identity: the caller's leaf certificate, read from the call's auth context
   (``x509_pem_cert``), must pass the X.509-SVID rules of
   :class:`meshlib.identity.svid.PeerSVIDValidator` for this workload's trust domain (one
   URI SAN with a workload path, not a CA). gRPC has no per-connection hook, so the
   validator's cache of verdicts makes the per-call check a dictionary lookup;
2. PeerAuthentication: a plaintext call (an insecure port) is refused under STRICT;
3. AuthorizationPolicy, with method ``POST`` and path ``/pkg.Service/Method``;
4. the local RateLimit (one bucket shared with the HTTP middleware of the same mesh);
5. the deadline: a call whose deadline has passed is refused; otherwise the remaining
   deadline is published for the handler's own meshed calls.

Refusals and the status they get (the flag also travels as trailing metadata
``x-mesh-flag``, as the HTTP middleware's ``x-mesh-flag`` header)::

    INVALID_PEER_CERT   UNAUTHENTICATED     TLS peer without a valid X.509-SVID
    PLAINTEXT_REFUSED   UNAUTHENTICATED     plaintext caller under STRICT
    AUTHZ_DENIED        PERMISSION_DENIED   details name the deciding policy and rule
    RATE_LIMITED        RESOURCE_EXHAUSTED  the local token bucket is empty
    DEADLINE_EXCEEDED   DEADLINE_EXCEEDED   the caller's deadline had passed on arrival

:func:`server_credentials` / :func:`add_secure_port` give a server the workload's SVID
through ``grpc.dynamic_ssl_server_credentials``: gRPC asks for the configuration on every
new handshake, so a rotated certificate or trust bundle applies without a restart, and
client certificates are required.
"""

from __future__ import annotations

import logging
from typing import Any

from meshlib.identity.svid import SVID
from meshlib.identity.tls import TLSContexts
from meshlib.inbound.refusal import FLAG_HEADER, Refusal
from meshlib.integrations.grpc_server_admission import GRPC_METHOD, admit, current_peer
from meshlib.integrations.grpc_server_interceptors import (
    AsyncMeshServerInterceptor,
    MeshLike,
    MeshServerInterceptor,
)

try:
    import grpc  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("meshlib's gRPC needs grpcio: pip install 'inproc-mesh[grpc]'") from exc

__all__ = [
    "FLAG_METADATA",
    "GRPC_METHOD",
    "AsyncMeshServerInterceptor",
    "MeshLike",
    "MeshServerInterceptor",
    "Refusal",
    "add_secure_port",
    "admit",
    "current_peer",
    "server_credentials",
]

log = logging.getLogger(__name__)

FLAG_METADATA = FLAG_HEADER.decode()
"""Trailing metadata key naming why the mesh refused a call (as HTTP's ``x-mesh-flag``)."""


# --------------------------------------------------------------------- credentials


def _configuration(svid: SVID) -> Any:
    return grpc.ssl_server_certificate_configuration(
        [(svid.key_pem, svid.cert_chain_pem)], root_certificates=svid.bundle_pem
    )


def server_credentials(tls: TLSContexts) -> grpc.ServerCredentials:
    """mTLS server credentials that follow every rotation of *tls*, without a restart.

    gRPC calls the fetcher on each new handshake; it answers None (keep the current
    configuration) unless the SVID's serial or trust bundle changed since the last one.
    Client certificates are required and verified against the current bundle.
    """
    served = [tls.svid]

    def fetch() -> Any:
        try:
            svid = tls.svid
            last = served[0]
            if svid.serial == last.serial and svid.bundle_pem == last.bundle_pem:
                return None
            served[0] = svid
            return _configuration(svid)
        except Exception:  # never break a handshake: keep serving the last good config
            log.exception("could not build the rotated gRPC server configuration")
            return None

    return grpc.dynamic_ssl_server_credentials(
        _configuration(served[0]), fetch, require_client_authentication=True
    )


def add_secure_port(server: Any, address: str, *, mesh: MeshLike) -> int:
    """Listen on *address* (``host:port``, port 0 for any) with the mesh's mTLS; return the port.

    Works for ``grpc.server`` and ``grpc.aio.server``. Register the instance afterwards with
    ``mesh.set_endpoint(host, port)`` once the server has started.
    """
    return int(server.add_secure_port(address, server_credentials(mesh.tls)))
