"""What the ADS server knows of each sidecar: sent, ACKed and rejected versions, notes.

Kept apart from :mod:`meshlib_control.xds.ads` so that the control plane and ``meshctl check``
can read it without importing the Envoy protobufs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from meshlib_control.xds.unsupported import Unsupported

__all__ = ["NodeStatus", "TypeStatus", "XdsStatus"]

Json = dict[str, Any]


@dataclass(slots=True)
class TypeStatus:
    """What one Envoy has of one resource type."""

    sent_version: str | None = None
    acked_version: str | None = None
    rejected_version: str | None = None
    error: str | None = None


@dataclass(slots=True)
class NodeStatus:
    """One connected (or last connected) sidecar, for ``meshctl check`` and the admin API."""

    node_id: str
    service: str
    namespace: str
    connected: bool = True
    connected_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    snapshot_version: str | None = None
    applied_version: str | None = None
    types: dict[str, TypeStatus] = field(default_factory=dict)
    unsupported: tuple[Unsupported, ...] = ()
    pushes: int = 0

    def to_dict(self) -> Json:
        """JSON for the admin API."""
        return {
            "nodeId": self.node_id,
            "service": self.service,
            "namespace": self.namespace,
            "connected": self.connected,
            "connectedAt": self.connected_at.isoformat(),
            "snapshotVersion": self.snapshot_version,
            "appliedVersion": self.applied_version,
            "pushes": self.pushes,
            "types": {
                kind: {
                    "sentVersion": t.sent_version,
                    "ackedVersion": t.acked_version,
                    "rejectedVersion": t.rejected_version,
                    "error": t.error,
                }
                for kind, t in self.types.items()
            },
            "unsupported": [
                {"path": u.path, "kind": u.kind, "reason": u.reason} for u in self.unsupported
            ],
        }


class XdsStatus:
    """Every sidecar the ADS server has seen since the control service started."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeStatus] = {}

    def add(self, node: NodeStatus, *, keep_disconnected: int = 100) -> None:
        """Track *node* (replacing an earlier stream of the same node); forget the oldest
        disconnected nodes beyond *keep_disconnected*."""
        self.nodes.pop(node.node_id, None)
        self.nodes[node.node_id] = node
        gone = [n for n in self.nodes.values() if not n.connected]
        for old in sorted(gone, key=lambda n: n.connected_at)[: -keep_disconnected or None]:
            del self.nodes[old.node_id]

    def connected(self) -> list[NodeStatus]:
        """The sidecars with an open stream."""
        return [n for n in self.nodes.values() if n.connected]
