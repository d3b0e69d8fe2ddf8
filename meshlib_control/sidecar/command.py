"""``meshctl sidecar``: its flags, and running the agent until a signal stops it."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path

from meshlib.config import parse_control_urls, parse_labels
from meshlib.errors import ConfigError

__all__ = ["configure_parser", "run_sidecar"]


def configure_parser(side: argparse.ArgumentParser) -> None:
    """Add the ``meshctl sidecar`` flags to *side*."""
    side.add_argument("--service", required=True, help="the app's service name")
    side.add_argument("--namespace", default="default", help="the app's namespace")
    side.add_argument("--app-port", type=int, required=True, help="the app's plaintext port")
    side.add_argument("--inbound-port", type=int, default=15006, help="mesh traffic in (mTLS)")
    side.add_argument(
        "--outbound-port", type=int, default=15001, help="the app's calls out (127.0.0.1)"
    )
    side.add_argument(
        "--admin-port", type=int, default=15020, help="metrics/identity for the control service"
    )
    side.add_argument("--envoy-admin-port", type=int, default=0, help="(inbound port + 1000)")
    side.add_argument("--address", default="127.0.0.1", help="inbound address, registered")
    side.add_argument(
        "--control",
        dest="sidecar_control",
        action="append",
        metavar="URL[,URL...]",
        help="control service(s) to fail over between, in order: repeat the flag or give a "
        "comma list (or meshctl --control, or MESH_CONTROL_URL)",
    )
    side.add_argument("--token", help="join token (or MESH_TOKEN)")
    side.add_argument("--sidecar-data-dir", help="key, SVID, Envoy files (or MESH_DATA_DIR)")
    side.add_argument("--labels", help="instance labels, version=v2,zone=a")
    side.add_argument(
        "--xds-address",
        help="ADS server(s) HOST:PORT[,HOST:PORT...] (default: asked of each control replica)",
    )
    side.add_argument("--base-id", type=int, help="Envoy --base-id (default: the inbound port)")
    side.add_argument(
        "--envoy-log-level",
        default="warning",
        metavar="LEVEL",
        help="Envoy's --log-level (trace, debug, info, warning, error, critical, off)",
    )


def control_urls(args: argparse.Namespace, env: dict[str, str] | os._Environ[str]) -> str | None:
    """The control addresses, validated, as a comma list: ``sidecar --control`` (repeatable),
    else ``meshctl --control``, else ``MESH_CONTROL_URL``.

    Raises:
        ConfigError: an entry is empty, not ``https://``, or repeated (naming the source).
    """
    sidecar_flags: list[str] | None = getattr(args, "sidecar_control", None)
    if sidecar_flags:
        return ",".join(parse_control_urls(sidecar_flags, "--control"))
    if getattr(args, "control", None):
        return ",".join(parse_control_urls(str(args.control), "--control"))
    if env.get("MESH_CONTROL_URL"):
        return ",".join(parse_control_urls(env["MESH_CONTROL_URL"], "MESH_CONTROL_URL"))
    return None


def xds_addresses(text: str | None) -> str | None:
    """``--xds-address`` validated, as a comma list of ``HOST:PORT`` (None: ask control).

    Raises:
        ConfigError: an entry is empty, not ``HOST:PORT`` (port 1-65535) or repeated.
    """
    if text is None:
        return None
    from meshlib_control.settings import split_hostport  # settings: only for this flag

    entries = [part.strip() for part in text.split(",")]
    seen: list[tuple[str, int]] = []
    for position, entry in enumerate(entries, 1):
        where = f"--xds-address: entry {position}"
        if not entry:
            raise ConfigError(f"{where} is empty (a stray comma?) in {text!r}")
        host, port = split_hostport(entry, where)
        if port == 0:
            raise ConfigError(f"{where}: {entry!r} needs a port 1-65535")
        if (host, port) in seen:
            raise ConfigError(f"{where}: {entry!r} repeats entry {seen.index((host, port)) + 1}")
        seen.append((host, port))
    return ",".join(entries)


def run_sidecar(args: argparse.Namespace) -> int:
    """Run the sidecar agent (and Envoy) of *args* until SIGINT or SIGTERM; its exit code."""
    # Deferred: every other meshctl command would otherwise import the library's agent.
    from meshlib_control.sidecar.agent import SidecarAgent, SidecarOptions

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    env = os.environ
    data_dir = args.sidecar_data_dir or env.get("MESH_DATA_DIR")
    agent = SidecarAgent(
        SidecarOptions(
            service=args.service,
            namespace=args.namespace,
            app_port=args.app_port,
            inbound_port=args.inbound_port,
            outbound_port=args.outbound_port,
            admin_port=args.admin_port,
            envoy_admin_port=args.envoy_admin_port,
            address=args.address,
            control_url=control_urls(args, env),
            token=args.token or env.get("MESH_TOKEN"),
            data_dir=Path(data_dir) if data_dir else None,
            labels=parse_labels(args.labels or env.get("MESH_LABELS", "")),
            xds_address=xds_addresses(args.xds_address),
            base_id=args.base_id,
            envoy_log_level=args.envoy_log_level,
        )
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: agent.stop())

    def ready(a: SidecarAgent) -> None:
        print(
            f"sidecar ready: {args.service} inbound {args.address}:{args.inbound_port} "
            f"-> app 127.0.0.1:{args.app_port}; outbound 127.0.0.1:{args.outbound_port}; "
            f"admin 127.0.0.1:{a.agent.admin_port}; instance {a.agent.instance_id}",
            flush=True,
        )

    return agent.run(ready)
