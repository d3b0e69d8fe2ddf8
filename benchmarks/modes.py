"""The benchmark's modes: the ways of making the frontend -> backend hop (:data:`MODES`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GRPC_METHOD", "MODES", "Mode"]

GRPC_METHOD = "/meshlib.demo.inventory.v1.Inventory/GetItem"


@dataclass(frozen=True, slots=True)
class Mode:
    """One way of making the frontend -> backend hop."""

    key: str  # a plain, b tls, c library, d sidecar, e library+tracing, run: meshctl run
    label: str
    protocol: str  # "http" or "grpc"
    app_mode: str  # what benchmarks.apps run as (see benchmarks/apps/common.py)

    @property
    def id(self) -> str:
        return f"{self.protocol}-{self.key}"

    @property
    def sidecar(self) -> bool:
        return self.app_mode == "app"

    @property
    def meshed(self) -> bool:
        """A mesh workload on both ends (library mode, or ``meshctl run`` of plain apps)."""
        return self.app_mode in ("mesh", "traced", "run")

    @property
    def services(self) -> tuple[str, str]:
        """(frontend, backend) service names in the mesh: distinct per mode, so an instance
        still deregistering from one mode never appears in the next one's snapshot."""
        return f"frontend-{self.protocol}-{self.key}", f"backend-{self.protocol}-{self.key}"

    def policy(self) -> str:
        """The mode's AuthorizationPolicy: the backend admits its frontend only, for /work."""
        front, back = self.services
        to = (
            f'{{methods: [POST], paths: ["{GRPC_METHOD}"]}}'
            if self.protocol == "grpc"
            else "{methods: [GET], paths: [/work]}"
        )
        return (
            "apiVersion: meshlib.io/v1\nkind: AuthorizationPolicy\n"
            f"metadata: {{name: {back}-allow-{front}}}\n"
            f"spec:\n  service: {back}\n  action: ALLOW\n  rules:\n"
            f'  - from: {{principals: ["spiffe://mesh.local/ns/default/sa/{front}"]}}\n'
            f"    to: {to}\n"
        )


_LABELS = {
    "a": ("plain", "plain"),
    "b": ("direct mTLS", "tls"),
    "c": ("meshlib library", "mesh"),
    "d": ("Envoy sidecar pair", "app"),
    "e": ("library + tracing", "traced"),
    "run": ("meshctl run (unmodified apps)", "run"),
}


MODES: dict[str, Mode] = {
    f"{protocol}-{key}": Mode(key, label, protocol, app_mode)
    for protocol in ("http", "grpc")
    for key, (label, app_mode) in _LABELS.items()
}
