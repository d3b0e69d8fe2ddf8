"""Every Consul failure, counted and reported; never raised into the mesh.

A failure is classified once, here: ``unreachable`` (connection refused, timeout, DNS),
``acl_denied`` (HTTP 403: the token lacks a permission), ``malformed`` (an answer that is
not the JSON shape expected) or ``error`` (any other status from Consul). Each one
increments the OpenTelemetry counter ``meshlib.control.consul.errors`` (attributes
``consul.direction`` = export|import and ``error.type``; recorded only where a meter
provider is installed) and the same count served as Prometheus text by
``GET /v1/admin/metrics``, and is shown by ``meshctl check``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

from opentelemetry import metrics

__all__ = ["ConsulStatus", "classify"]


def classify(exc: BaseException) -> str:
    """The error type of a failed Consul call."""
    try:
        import consul
        import requests
    except ImportError:  # pragma: no cover - the caller imported py-consul already
        return "error"
    if isinstance(exc, consul.ACLPermissionDenied):
        return "acl_denied"
    if isinstance(exc, requests.ConnectionError | requests.Timeout | consul.Timeout | OSError):
        return "unreachable"
    malformed = json.JSONDecodeError | ValueError | KeyError | TypeError | AttributeError
    # py-consul wraps a body it cannot decode in ConsulException, from the JSON error.
    if isinstance(exc, malformed) or isinstance(exc.__cause__, malformed):
        return "malformed"
    return "error"


class ConsulStatus:
    """What the Consul links did last, for ``meshctl check`` and the metric.

    Args:
        url: the agent's URL, for messages.
        meter_provider: where the error counter goes (default: the global provider).
    """

    def __init__(self, url: str, *, meter_provider: Any = None) -> None:
        self.url = url
        self._lock = threading.Lock()
        self.errors: Counter[tuple[str, str]] = Counter()
        self.last_error: dict[str, str] = {}  # direction -> message of the latest failure
        self.last_ok: dict[str, float] = {}  # direction -> monotonic time of the last success
        self.exported = 0
        provider = meter_provider or metrics.get_meter_provider()
        self._counter = provider.get_meter("meshlib_control.consul").create_counter(
            "meshlib.control.consul.errors",
            unit="{error}",
            description="Failed calls to Consul, by direction and error type",
        )

    def failed(self, direction: str, exc: BaseException, what: str) -> str:
        """Record a failure of *what*; returns its error type."""
        kind = classify(exc)
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        with self._lock:
            self.errors[(direction, kind)] += 1
            self.last_error[direction] = f"{what}: {kind}: {text}"
        self._counter.add(1, {"consul.direction": direction, "error.type": kind})
        return kind

    def succeeded(self, direction: str) -> None:
        with self._lock:
            self.last_error.pop(direction, None)
            self.last_ok[direction] = time.monotonic()

    def prometheus_text(self) -> str:
        """The counts as Prometheus text (``GET /v1/admin/metrics``): the control service
        has no meter provider of its own, so this is where the series can be scraped."""
        lines = [
            "# HELP meshlib_control_consul_errors_total Failed calls to Consul.",
            "# TYPE meshlib_control_consul_errors_total counter",
        ]
        with self._lock:
            for (direction, kind), n in sorted(self.errors.items()):
                lines.append(
                    f'meshlib_control_consul_errors_total{{consul_direction="{direction}",'
                    f'error_type="{kind}"}} {n}'
                )
            lines += [
                "# HELP meshlib_control_consul_exported_instances Instances registered in Consul.",
                "# TYPE meshlib_control_consul_exported_instances gauge",
                f"meshlib_control_consul_exported_instances {self.exported}",
            ]
        return "\n".join(lines) + "\n"

    def checks(self) -> list[dict[str, str]]:
        """``meshctl check`` lines: one per direction that has run."""
        out = []
        with self._lock:
            for direction in sorted({d for d, _ in self.errors} | set(self.last_ok)):
                counts = {k: n for (d, k), n in self.errors.items() if d == direction}
                total = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none"
                error = self.last_error.get(direction)
                if error is not None:
                    status = "fail" if direction not in self.last_ok else "warn"
                    message = f"{self.url}: failing ({error}); errors so far: {total}"
                else:
                    status = "ok"
                    detail = (
                        f"{self.exported} instance(s) registered" if direction == "export" else "ok"
                    )
                    message = f"{self.url}: {detail}; errors so far: {total}"
                out.append({"name": f"consul {direction}", "status": status, "message": message})
        return out
