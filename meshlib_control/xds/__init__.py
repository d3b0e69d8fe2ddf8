"""Envoy sidecars: the PURE Snapshot → Envoy v3 translator and its static rendering."""

from __future__ import annotations

from meshlib_control.xds.translate import EnvoyResources, SidecarNode, translate
from meshlib_control.xds.unsupported import Unsupported

__all__ = ["EnvoyResources", "SidecarNode", "Unsupported", "translate"]
