"""``meshctl``: the operator CLI (and ``meshctl control serve``, the control service).

Every command but ``control serve`` talks to the admin API over mTLS with the admin SVID
found in the data dir (``--data-dir``, default ``./.mesh``); ``--control URL`` overrides the
URL recorded there.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from meshlib.errors import MeshError
from meshlib_control.admin_client import AdminClient, CLIError
from meshlib_control.ca.commands import configure_parser as configure_ca
from meshlib_control.ca.commands import run_ca
from meshlib_control.commands import ADMIN_COMMANDS, cmd_dashboard
from meshlib_control.sidecar.command import configure_parser as configure_sidecar
from meshlib_control.sidecar.command import run_sidecar

__all__ = ["AdminClient", "CLIError", "main"]

# Settings fields that are plain integer limits, each a ``control serve`` flag
# (``max_labels`` → ``--max-labels``); documented in docs/operations.md, "Quotas".
QUOTA_FLAGS = {
    "max_labels": "labels per instance",
    "max_label_key_bytes": "bytes in one label key",
    "max_label_value_bytes": "bytes in one label value",
    "max_labels_bytes": "bytes of all label keys and values of one instance",
    "max_instances_per_identity": "live instances one identity may register",
    "max_owned_ids_per_identity": "lapsed instance ids kept reserved for their identity",
    "max_watch_keys_per_identity": "distinct `deps` sets one identity may watch at once",
    "max_deps": "services named in one `deps`",
    "scrape_max_bytes": "bytes of one admin page the observer reads",
}


def _cmd_control_serve(args: argparse.Namespace) -> None:
    from datetime import timedelta

    from meshlib_control.ca.tokens import parse_ttl
    from meshlib_control.server import run
    from meshlib_control.settings import Settings

    def ttl(flag: str, value: str | None, default: timedelta) -> timedelta:
        if value is None:
            return default
        try:
            return parse_ttl(value)
        except MeshError as exc:
            raise CLIError(f"{flag}: {exc}") from exc

    defaults = Settings()
    settings = Settings(
        data_dir=Path(args.data_dir),
        listen=args.listen,
        xds_listen=args.xds_listen,
        trust_domain=args.trust_domain,
        ca_cert=Path(args.ca_cert) if args.ca_cert else None,
        ca_key=Path(args.ca_key) if args.ca_key else None,
        svid_ttl=ttl("--svid-ttl", args.svid_ttl, defaults.svid_ttl),
        instance_ttl=ttl("--instance-ttl", args.instance_ttl, defaults.instance_ttl),
        rebootstrap_ttl=ttl("--rebootstrap-ttl", args.rebootstrap_ttl, defaults.rebootstrap_ttl),
        store=args.store,
        **{
            field: getattr(args, field) for field in QUOTA_FLAGS if getattr(args, field) is not None
        },
    )
    run(settings, scrape_interval=args.scrape_interval)


def _parser() -> argparse.ArgumentParser:
    from meshlib_control.settings import (
        DEFAULT_LISTEN,
        DEFAULT_TRUST_DOMAIN,
        DEFAULT_XDS_LISTEN,
        Settings,
    )

    parser = argparse.ArgumentParser(prog="meshctl", description="Operate a meshlib mesh.")
    parser.add_argument("--data-dir", default=".mesh", help="control service data dir (.mesh)")
    parser.add_argument("--control", help="control service URL (default: from the data dir)")
    sub = parser.add_subparsers(dest="command", required=True)

    control = sub.add_parser("control", help="the control service")
    control_sub = control.add_subparsers(dest="control_command", required=True)
    serve = control_sub.add_parser("serve", help="run the control service")
    serve.add_argument("--data-dir", dest="data_dir_serve")
    serve.add_argument("--listen", default=DEFAULT_LISTEN)
    serve.add_argument(
        "--xds-listen",
        default=None,
        metavar="HOST:PORT",
        help=f"serve ADS to Envoy sidecars here (e.g. {DEFAULT_XDS_LISTEN}; port 0: any free); "
        "off when not given",
    )
    serve.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    serve.add_argument("--ca-cert", help="plugged-in CA certificate (PEM)")
    serve.add_argument("--ca-key", help="plugged-in CA private key (PEM)")
    serve.add_argument("--svid-ttl", help="workload certificate lifetime (24h)")
    serve.add_argument("--instance-ttl", help="registration lease without heartbeat (15s)")
    serve.add_argument(
        "--store",
        help="where the state lives: etcd://HOST:PORT[,HOST:PORT...] (replicas share it) or "
        "sqlite:///PATH (default: mesh.db in the data dir)",
    )
    serve.add_argument(
        "--rebootstrap-ttl",
        help="lifetime of the one-use credential that lets a workload whose SVID expired "
        "rejoin (7d)",
    )
    for field, help_text in QUOTA_FLAGS.items():
        serve.add_argument(
            "--" + field.replace("_", "-"),
            type=int,
            metavar="N",
            help=f"{help_text} ({getattr(Settings(), field)})",
        )
    serve.add_argument(
        "--scrape-interval",
        type=float,
        help="seconds between scrapes of the instances' admin ports (5)",
    )

    token = sub.add_parser("token", help="join tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a join token; prints it alone")
    create.add_argument("--service", required=True)
    create.add_argument("--namespace", default="default")
    create.add_argument("--ttl", default="1h")
    create.add_argument("--uses", type=int, default=1)
    revoke = token_sub.add_parser(
        "revoke",
        help="revoke an identity's re-bootstrap credentials (an expired SVID cannot rejoin)",
    )
    revoke.add_argument("--service", required=True)
    revoke.add_argument("--namespace", default="default")

    apply = sub.add_parser("apply", help="create or update resources from YAML")
    apply.add_argument("-f", "--file", required=True, help="file, or - for stdin")

    get = sub.add_parser("get", help="show resources, services, instances, certificates, tokens")
    get.add_argument("kind")
    get.add_argument("name", nargs="?")
    get.add_argument("-n", "--namespace")
    get.add_argument("-o", "--output", choices=("table", "yaml", "json"), default="table")

    delete = sub.add_parser("delete", help="delete a resource")
    delete.add_argument("kind")
    delete.add_argument("name")
    delete.add_argument("-n", "--namespace")

    stat = sub.add_parser("stat", help="golden metrics per service and edge")
    stat.add_argument("service", nargs="?")
    stat.add_argument("-n", "--namespace")
    stat.add_argument("-o", "--output", choices=("table", "json"), default="table")

    check = sub.add_parser("check", help="health of the mesh; exit 1 on any failure")
    check.add_argument("-o", "--output", choices=("text", "json"), default="text")

    explain = sub.add_parser("explain", help="the policy each instance of a service applies")
    explain.add_argument("service")
    explain.add_argument("-n", "--namespace")
    explain.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")

    sub.add_parser("dashboard", help="print the web dashboard's URL (with its access token)")

    configure_ca(sub.add_parser("ca", help="root CA, replica intermediates, trust bundle"))
    configure_sidecar(
        sub.add_parser(
            "sidecar",
            help="run an Envoy sidecar for an unmodified app (agent: identity, secrets, Envoy)",
        )
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``meshctl`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "control":
            if args.data_dir_serve:
                args.data_dir = args.data_dir_serve
            _cmd_control_serve(args)
            return 0
        if args.command == "sidecar":
            return run_sidecar(args)
        if args.command == "ca":
            return run_ca(args)
        if args.command == "dashboard":
            cmd_dashboard(args)
            return 0
        client = AdminClient(Path(args.data_dir), args.control)
        try:
            code = ADMIN_COMMANDS[args.command](client, args)
        finally:
            client.close()
        if code:
            return code
    except MeshError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
