"""Prometheus HTTP service discovery: every live instance's admin endpoint as a scrape target.

The answer is Prometheus's ``http_sd_configs`` format, one target group per instance::

    [{"targets": ["127.0.0.1:40123"],
      "labels": {"__metrics_path__": "/metrics", "__scheme__": "http",
                 "mesh_service": "orders", "mesh_namespace": "default",
                 "mesh_instance": "orders-1a2b", "mesh_mode": "library",
                 "__meta_mesh_label_version": "v1"}}]

A library instance's target is its admin port (``/metrics`` of :mod:`meshlib.runtime.admin`);
a sidecar's is its agent's admin port, whose ``/metrics`` carries Envoy's statistics and the
agent's gauges. Only instances the control service's own scraper would read are listed
(:func:`~meshlib_control.observe.targets.admin_refusal`): a workload chooses what it
registers, and discovery must not turn Prometheus into a scanner of addresses a workload
names. The instance's own labels (``version``, ``zone``, …) come as ``__meta_mesh_label_*``
labels, there for relabelling and dropped by Prometheus unless a rule keeps them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from meshlib_control.observe.targets import admin_refusal
from meshlib_control.store.records import InstanceRecord

__all__ = ["METRICS_PATH", "scrape_targets"]

METRICS_PATH = "/metrics"
_LABEL_NAME = re.compile(r"[^a-zA-Z0-9_]")


def _target(record: InstanceRecord) -> str:
    host = record.address or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{record.admin_port}"


def scrape_targets(instances: Iterable[InstanceRecord]) -> list[dict[str, Any]]:
    """The ``http_sd_configs`` target groups of *instances* (sorted by instance id).

    Instances without an admin port, or whose admin address the observer refuses, are left
    out.
    """
    groups: list[dict[str, Any]] = []
    for record in sorted(instances, key=lambda r: r.id):
        if not record.admin_port or admin_refusal(record) is not None:
            continue
        labels = {
            "__metrics_path__": METRICS_PATH,
            "__scheme__": "http",
            "mesh_service": record.service,
            "mesh_namespace": record.namespace,
            "mesh_instance": record.id,
            "mesh_mode": record.mode,
        }
        for key, value in record.labels:
            labels[f"__meta_mesh_label_{_LABEL_NAME.sub('_', key)}"] = value
        groups.append({"targets": [_target(record)], "labels": labels})
    return groups
