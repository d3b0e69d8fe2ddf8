"""The ExternalService model: a destination outside the mesh, found in Consul.

A service registered in Consul by something other than the mesh (``legacy-billing``)
becomes a name meshed clients can call: ``http://legacy-billing/…`` goes to the healthy
instances Consul lists for the selected service and tags, with the destination's
TrafficPolicy (timeouts, retries, breakers, balancing) applied as for a mesh service.
No mesh identity is claimed for those instances: the hop is plaintext (``tls: none``) or
server-authenticated TLS against ``caCertificate`` (``tls: tls``), never mesh mTLS.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EXTERNAL_TLS_MODES", "ExternalServiceSpec"]

EXTERNAL_TLS_MODES = ("none", "tls")
MAX_CONSUL_TAGS = 16
MAX_CA_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ExternalServiceSpec:
    """Which Consul instances a mesh name stands for, and how to reach them.

    Attributes:
        consul_service: the Consul service name (default: the resource's name).
        tags: tags every selected instance must carry (Consul's ``?tag=`` filter).
        tls: ``none`` (plaintext HTTP) or ``tls`` (HTTPS, the server verified against
            *ca_certificate*, or the system trust store when it is empty).
        ca_certificate: PEM roots the server's certificate must chain to.
        sni: server name sent and verified (default: the instance's address).
    """

    consul_service: str
    tags: tuple[str, ...] = ()
    tls: str = "none"
    ca_certificate: str = ""
    sni: str | None = None
