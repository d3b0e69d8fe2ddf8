"""The node of an ADS stream: what an Envoy says it is, checked before anything is served."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from meshlib_control.xds.translate import SidecarNode

__all__ = ["NodeError", "node_from_request"]

Json = dict[str, Any]


class NodeError(ValueError):
    """A node description that cannot be served; the message names the field."""


def _metadata_int(meta: Json, key: str, *, required: bool) -> int | None:
    value = meta.get(key)
    if value is None:
        if required:
            raise NodeError(f"node.metadata.{key}: required")
        return None
    if not isinstance(value, int | float) or int(value) != value or not 0 < value < 65536:
        raise NodeError(f"node.metadata.{key}: must be a port number, got {value!r}")
    return int(value)


def _metadata_str(meta: Json, key: str) -> str | None:
    value = meta.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise NodeError(f"node.metadata.{key}: must be a non-empty string")
    return value


def node_from_request(node: Any, trust_domain: str) -> tuple[str, SidecarNode]:
    """``(node id, SidecarNode)`` from an Envoy ``Node`` message; NodeError if incomplete."""
    if not node.id:
        raise NodeError("node.id: required (the sidecar's instance id)")
    if not node.cluster:
        raise NodeError("node.cluster: required (the service name)")
    meta = json_format.MessageToDict(node.metadata)
    inbound = _metadata_int(meta, "inboundPort", required=True)
    app = _metadata_int(meta, "appPort", required=True)
    outbound = _metadata_int(meta, "outboundPort", required=True)
    assert inbound is not None and app is not None and outbound is not None
    return node.id, SidecarNode(
        service=node.cluster,
        namespace=_metadata_str(meta, "namespace") or "default",
        trust_domain=trust_domain,
        inbound_port=inbound,
        app_port=app,
        outbound_port=outbound,
        inbound_address=_metadata_str(meta, "inboundAddress") or "0.0.0.0",
        zone=_metadata_str(meta, "zone"),
        secrets_dir=_metadata_str(meta, "secretsDir"),
    )
