"""``meshctl``: the operator CLI (and ``meshctl control serve``, the control service).

Every command but ``control serve``, ``sidecar``, ``version`` and ``completion`` talks to
the admin API over mTLS with the admin SVID found in the data dir (``--data-dir``, else
``$MESHCTL_DATA_DIR``, else ``$MESH_DATA_DIR``, else ``./.mesh``); ``--control URL`` (else
``$MESH_CONTROL_URL``) overrides the URL recorded there. Global flags may come before or
after the subcommand. The reference is docs/cli.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from meshlib.errors import MeshError
from meshlib_control.admin_client import AdminClient, CLIError
from meshlib_control.ca.commands import configure_parser as configure_ca
from meshlib_control.ca.commands import run_ca
from meshlib_control.cli_parser import (
    HelpFormatter,
    add_admin_parsers,
    add_global_flags,
    spread_global_flags,
    wrap_text,
)
from meshlib_control.commands import ADMIN_COMMANDS, cmd_dashboard
from meshlib_control.completion import SHELLS, completion_script
from meshlib_control.sidecar.command import configure_parser as configure_sidecar
from meshlib_control.sidecar.command import run_sidecar

__all__ = ["AdminClient", "CLIError", "main", "missing_extra", "version"]

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
DISTRIBUTION = "inproc-mesh"
# Top-level modules of optional dependencies → the extra that installs them.
EXTRAS = {
    "uvicorn": "control",
    "fastapi": "control",
    "starlette": "control",
    "httptools": "control",
    "grpc": "control",
    "google": "control",
    "envoy": "sidecar",
}


def version() -> str:
    """The installed distribution's version (``0+unknown`` when run from a bare tree)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"


def missing_extra(exc: ModuleNotFoundError, command: str) -> str:
    """The one line that answers a missing optional dependency: what to install."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(top, "all")
    return (
        f"meshctl {command} needs the [{extra}] extra (missing module {exc.name!r}): "
        f"pip install '{DISTRIBUTION}[{extra}]'"
    )


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
        consul=args.consul or os.environ.get("CONSUL_HTTP_ADDR") or None,
        consul_token=args.consul_token or os.environ.get("CONSUL_HTTP_TOKEN") or None,
        **{
            field: getattr(args, field) for field in QUOTA_FLAGS if getattr(args, field) is not None
        },
    )
    run(settings, scrape_interval=args.scrape_interval)


def _add_serve_parser(control_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from meshlib_control.settings import (
        DEFAULT_LISTEN,
        DEFAULT_TRUST_DOMAIN,
        DEFAULT_XDS_LISTEN,
        Settings,
    )

    serve = control_sub.add_parser(
        "serve",
        help="run the control service",
        description=wrap_text(
            "Run the control service (CA, registry, snapshots, admin API) until "
            "SIGINT or SIGTERM. It writes the admin SVID and control.json into the data dir."
        ),
        epilog="examples:\n  meshctl control serve --data-dir /var/lib/mesh\n"
        "  meshctl control serve --listen 0.0.0.0:7443 --xds-listen 127.0.0.1:18000",
        formatter_class=HelpFormatter,
    )
    serve.add_argument(
        "--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT", help="HTTPS (mTLS) address"
    )
    serve.add_argument(
        "--xds-listen",
        default=None,
        metavar="HOST:PORT",
        help=f"serve ADS to Envoy sidecars here (e.g. {DEFAULT_XDS_LISTEN}; port 0: any free); "
        "off when not given",
    )
    serve.add_argument(
        "--trust-domain", default=DEFAULT_TRUST_DOMAIN, metavar="DOMAIN", help="SPIFFE trust domain"
    )
    serve.add_argument("--ca-cert", metavar="PEM", help="plugged-in CA certificate (PEM file)")
    serve.add_argument("--ca-key", metavar="PEM", help="plugged-in CA private key (PEM file)")
    serve.add_argument("--svid-ttl", metavar="TTL", help="workload certificate lifetime (24h)")
    serve.add_argument(
        "--instance-ttl", metavar="TTL", help="registration lease without heartbeat (15s)"
    )
    serve.add_argument(
        "--store",
        metavar="URL",
        help="where the state lives: etcd://HOST:PORT[,HOST:PORT...][/PREFIX] (replicas share "
        "it; etcds://...?ca=&cert=&key= for TLS) or sqlite:///PATH (default: mesh.db in the "
        "data dir)",
    )
    serve.add_argument(
        "--consul",
        metavar="URL",
        help="keep this Consul agent's catalog in step with the registry and import "
        "ExternalServices from it (http://HOST:8500; env CONSUL_HTTP_ADDR; docs/consul.md)",
    )
    serve.add_argument(
        "--consul-token", metavar="TOKEN", help="Consul ACL token (env CONSUL_HTTP_TOKEN)"
    )
    serve.add_argument(
        "--rebootstrap-ttl",
        metavar="TTL",
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
        metavar="SECONDS",
        help="seconds between scrapes of the instances' admin ports (5)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshctl",
        description=wrap_text(
            "Operate a meshlib mesh: run the control service, apply policy, inspect "
            "services, instances and golden metrics, run Envoy sidecars."
        ),
        epilog="examples:\n  meshctl control serve\n  meshctl apply -f policy.yaml --dry-run\n"
        "  meshctl get services\n  meshctl stat orders -o json\n  meshctl check\n\n"
        "environment: MESHCTL_DATA_DIR or MESH_DATA_DIR (--data-dir), MESH_CONTROL_URL "
        "(--control), MESH_LOG_LEVEL=debug (--debug)",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"meshctl {version()}")
    add_global_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    control = sub.add_parser("control", help="the control service", formatter_class=HelpFormatter)
    control_sub = control.add_subparsers(dest="control_command", required=True, metavar="COMMAND")
    _add_serve_parser(control_sub)

    add_admin_parsers(sub)

    configure_ca(sub.add_parser("ca", help="root CA, replica intermediates, trust bundle"))
    configure_sidecar(
        sub.add_parser(
            "sidecar",
            help="run an Envoy sidecar for an unmodified app (agent: identity, secrets, Envoy)",
            formatter_class=HelpFormatter,
        )
    )
    run = sub.add_parser(
        "run",
        help="run an unmodified Python service in the mesh (docs/run.md)",
        usage="meshctl run [--service S] [--namespace N] [--labels k=v,...] -- COMMAND [ARG...]",
        add_help=False,
    )
    run.add_argument("args", nargs=argparse.REMAINDER, help="meshlib.run's flags and command")
    sub.add_parser("version", help="print meshctl's version", formatter_class=HelpFormatter)
    completion = sub.add_parser(
        "completion",
        help="print a shell completion script",
        epilog='examples:\n  eval "$(meshctl completion bash)"\n'
        "  meshctl completion zsh > ~/.zfunc/_meshctl",
        formatter_class=HelpFormatter,
    )
    completion.add_argument("shell", choices=SHELLS, help="the shell to complete for")
    spread_global_flags(parser)
    return parser


def _debug(args: argparse.Namespace | None) -> bool:
    return bool(getattr(args, "debug", False)) or (
        os.environ.get("MESH_LOG_LEVEL", "").lower() == "debug"
    )


def _command_name(args: argparse.Namespace) -> str:
    nested = getattr(args, f"{args.command}_command", None)
    return f"{args.command} {nested}" if nested else str(args.command)


def _run(args: argparse.Namespace) -> int:
    if args.command == "control":
        _cmd_control_serve(args)
        return 0
    if args.command == "version":
        print(f"meshctl {version()}")
        return 0
    if args.command == "completion":
        print(completion_script(_parser(), args.shell), end="")
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
        return ADMIN_COMMANDS[args.command](client, args) or 0
    finally:
        client.close()


def _exec_run(words: list[str]) -> None:
    """``meshctl [global flags] run …``: exec ``python -m meshlib.run …`` (docs/run.md).

    The launcher parses its own flags; exec keeps the pid, the signals and the exit code.
    ``--control`` and ``--debug`` before ``run`` become MESH_CONTROL_URL and
    MESH_LOG_LEVEL=debug; ``--data-dir`` is meshctl's own, not the workload's.
    """
    i = 0
    while i < len(words) and words[i] != "run":
        flag, _, value = words[i].partition("=")
        if flag == "--debug" and not value:
            os.environ["MESH_LOG_LEVEL"] = "debug"
            i += 1
        elif flag in ("--control", "--data-dir"):
            if not value and i + 1 < len(words):
                value, i = words[i + 1], i + 1
            if flag == "--control":
                os.environ["MESH_CONTROL_URL"] = value
            i += 1
        else:
            return  # not a run command: argparse handles it
    if i < len(words):
        os.execv(sys.executable, [sys.executable, "-m", "meshlib.run", *words[i + 1 :]])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``meshctl`` console script.

    Errors are one ``error: …`` line on stderr and exit code 1 (2 for bad usage, 130 on
    Ctrl-C); ``--debug`` or ``MESH_LOG_LEVEL=debug`` adds the traceback.
    """
    words = list(sys.argv[1:] if argv is None else argv)
    _exec_run(words)
    args = _parser().parse_args(words)
    try:
        return _run(args)
    except KeyboardInterrupt:
        return 130
    except (MeshError, ModuleNotFoundError) as exc:
        if _debug(args):
            traceback.print_exc()
        if isinstance(exc, ModuleNotFoundError):
            message = missing_extra(exc, _command_name(args))
        else:
            message = str(exc)
        print(f"error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
