"""Copy the Envoy API modules the control service needs out of an installed ``xds-protos``.

The control service speaks xDS to Envoy with protobuf classes generated from Envoy's
data-plane API (Apache-2.0). The ``xds-protos`` distribution ships them, but it also ships
old copies of ``opentelemetry/proto/*`` that overwrite the real ``opentelemetry-proto``
package on install, which breaks the OTLP exporter. So instead of depending on it, the
modules reachable from :data:`ROOTS` are copied into ``meshlib_control/xds/protos`` with
their imports rewritten to that package (the ``.proto`` file names in the descriptor pool
stay the same, so JSON and ``Any`` type URLs are unchanged). ``google.rpc`` comes from
``googleapis-common-protos``, ``google.protobuf`` from ``protobuf``.

Run by hand when Envoy's API moves (``pip install xds-protos`` into a scratch venv first)::

    python tools/vendor_envoy_protos.py [SITE_PACKAGES]
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import sys
from pathlib import Path

ROOTS = (
    "envoy.extensions.access_loggers.filters.cel.v3.cel_pb2",
    "envoy.config.cluster.v3.cluster_pb2",
    "envoy.config.core.v3.base_pb2",
    "envoy.config.endpoint.v3.endpoint_pb2",
    "envoy.config.listener.v3.listener_pb2",
    "envoy.config.route.v3.route_pb2",
    "envoy.extensions.filters.http.fault.v3.fault_pb2",
    "envoy.extensions.filters.http.jwt_authn.v3.config_pb2",
    "envoy.extensions.filters.http.local_ratelimit.v3.local_rate_limit_pb2",
    "envoy.extensions.filters.http.rbac.v3.rbac_pb2",
    "envoy.extensions.filters.http.router.v3.router_pb2",
    "envoy.extensions.filters.listener.tls_inspector.v3.tls_inspector_pb2",
    "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
    "envoy.extensions.http.early_header_mutation.header_mutation.v3.header_mutation_pb2",
    "envoy.extensions.transport_sockets.tls.v3.tls_pb2",
    "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2",
    "envoy.service.discovery.v3.ads_pb2_grpc",
    "envoy.service.discovery.v3.discovery_pb2",
)
# Top-level packages taken from xds-protos; everything else must come from elsewhere.
VENDORED = ("envoy", "udpa", "validate", "xds", "google.api.expr")
# Provided by other distributions the [control] extra depends on.
PROVIDED = ("google.protobuf", "google.rpc")
TARGET_PACKAGE = "meshlib_control.xds.protos"
TARGET = Path(__file__).resolve().parent.parent / "meshlib_control" / "xds" / "protos"
_IMPORT = re.compile(r"^from ([\w.]+) import (\w+)", re.M)


def _vendored(module: str) -> bool:
    return any(module == v or module.startswith(v + ".") for v in VENDORED)


def _closure(site: Path) -> list[str]:
    seen: set[str] = set()
    stack = list(ROOTS)
    while stack:
        module = stack.pop()
        if module in seen:
            continue
        seen.add(module)
        for package, name in _IMPORT.findall((site / _path(module)).read_text()):
            full = f"{package}.{name}"
            if _vendored(full):
                stack.append(full)
            elif not any(full.startswith(p + ".") for p in PROVIDED) and package != "grpc":
                raise SystemExit(f"{module} imports {full}, neither vendored nor provided")
    return sorted(seen)


def _path(module: str) -> Path:
    return Path(*module.split(".")).with_suffix(".py")


def _rewrite(text: str) -> str:
    pattern = "|".join(re.escape(v) for v in VENDORED)
    text = re.sub(rf"^from ({pattern})([\w.]*) import", rf"from {TARGET_PACKAGE}.\1\2 import",
                  text, flags=re.M)  # fmt: skip
    # The module name the builder gives the generated classes (their __module__).
    return re.sub(rf"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')(({pattern})[\w.]*)'",
                  rf"\1{TARGET_PACKAGE}.\2'", text)  # fmt: skip


def main() -> None:
    dist = importlib.metadata.distribution("xds-protos")
    site = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(str(dist.locate_file("")))
    modules = _closure(site)
    keep = {TARGET / "README.md"}
    for child in TARGET.iterdir() if TARGET.exists() else ():
        if child not in keep:
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    TARGET.mkdir(parents=True, exist_ok=True)
    for module in modules:
        out = TARGET / _path(module)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(_rewrite((site / _path(module)).read_text()))
        for parent in out.relative_to(TARGET).parents:
            (TARGET / parent / "__init__.py").touch()
    (TARGET / "__init__.py").write_text(
        f'"""Envoy API modules copied from xds-protos {dist.version} (tools/vendor_envoy_protos.py)."""\n'
    )
    print(f"{len(modules)} modules from xds-protos {dist.version} into {TARGET}")


if __name__ == "__main__":
    main()
