"""``meshctl``: the operator CLI (and ``meshctl control serve``, the control service).

Every command but ``control serve`` talks to the admin API over mTLS with the admin SVID
found in the data dir (``--data-dir``, default ``./.mesh``); ``--control URL`` overrides the
URL recorded there.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from meshlib.errors import MeshError
from meshlib.integrations.httpx import IdentityTransport
from meshlib.policy.model import KINDS

__all__ = ["AdminClient", "main"]

LISTINGS = {
    "services": "services",
    "service": "services",
    "svc": "services",
    "instances": "instances",
    "instance": "instances",
    "certificates": "certificates",
    "certificate": "certificates",
    "certs": "certificates",
    "tokens": "tokens",
    "token": "tokens",
    "sidecars": "sidecars",
    "sidecar": "sidecars",
}
_KIND_ALIASES = {k.lower(): k for k in KINDS} | {
    "trafficpolicies": "TrafficPolicy",
    "authorizationpolicies": "AuthorizationPolicy",
    "peerauthentications": "PeerAuthentication",
    "ratelimits": "RateLimit",
    "tp": "TrafficPolicy",
    "authz": "AuthorizationPolicy",
    "pa": "PeerAuthentication",
    "rl": "RateLimit",
}


class CLIError(MeshError):
    """A command failed; the message is printed as ``error: …``."""


class AdminClient:
    """The admin API of the control service owning *data_dir*."""

    def __init__(self, data_dir: Path, url: str | None = None) -> None:
        info_path = data_dir / "control.json"
        admin = data_dir / "admin"
        try:
            info = json.loads(info_path.read_text())
        except FileNotFoundError:
            raise CLIError(
                f"no control service found in {data_dir} (missing control.json): start one with "
                f"`meshctl --data-dir {data_dir} control serve`, or pass --data-dir"
            ) from None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cafile=admin / "bundle.pem")
        ctx.load_cert_chain(admin / "admin.pem", admin / "admin.key")
        self.url = (url or info["url"]).rstrip("/")
        self._http = httpx.Client(
            transport=IdentityTransport(expected=info["controlId"], tls=lambda: ctx),
            base_url=self.url,
            timeout=15.0,
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One admin call; raises CLIError with the server's message on failure."""
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.HTTPError, MeshError) as exc:
            raise CLIError(f"control service unreachable at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text
            raise CLIError(message)
        return response.json()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()


def _kind(name: str) -> str:
    kind = _KIND_ALIASES.get(name.lower())
    if kind is None:
        choices = ", ".join([*KINDS, *sorted(set(LISTINGS.values()))])
        raise CLIError(f"unknown kind {name!r}; one of: {choices}")
    return kind


def _print(items: list[dict[str, Any]], output: str, columns: Sequence[tuple[str, str]]) -> None:
    if output == "json":
        print(json.dumps(items, indent=2))
        return
    if output == "yaml":
        print(yaml.safe_dump_all(items, sort_keys=False), end="")
        return
    rows = [[h for h, _ in columns]]
    for item in items:
        row = []
        for _, key in columns:
            value: Any = item
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            row.append("-" if value is None else str(value))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


_COLUMNS = {
    "services": [("NAMESPACE", "namespace"), ("NAME", "name"), ("INSTANCES", "instances"),
                 ("MODES", "modes")],
    "instances": [("ID", "id"), ("SERVICE", "service"), ("NAMESPACE", "namespace"),
                  ("ADDRESS", "address"), ("PORT", "port"), ("MODE", "mode"),
                  ("APPLIED", "appliedVersion"), ("REJECTED", "rejectedVersion")],
    "certificates": [("SERIAL", "serial"), ("SPIFFE ID", "spiffeId"), ("NOT AFTER", "notAfter")],
    "tokens": [("ID", "id"), ("SPIFFE ID", "spiffeId"), ("EXPIRES", "expiresAt"),
               ("USES LEFT", "usesLeft")],
    "sidecars": [("NODE", "nodeId"), ("SERVICE", "service"), ("CONNECTED", "connected"),
                 ("SNAPSHOT", "snapshotVersion"), ("APPLIED", "appliedVersion"),
                 ("PUSHES", "pushes")],
    "resources": [("NAMESPACE", "metadata.namespace"), ("NAME", "metadata.name"),
                  ("REVISION", "status.revision"), ("UPDATED", "status.updatedAt")],
}  # fmt: skip


def _cmd_get(client: AdminClient, args: argparse.Namespace) -> None:
    listing = LISTINGS.get(args.kind.lower())
    if listing is not None:
        items = client.call("GET", f"/v1/admin/{listing}")["items"]
        _print(items, args.output, _COLUMNS[listing])
        return
    kind = _kind(args.kind)
    params = {"namespace": args.namespace} if args.namespace or args.name else {}
    if args.name:
        params = {"namespace": args.namespace or "default", "name": args.name}
    items = client.call("GET", f"/v1/admin/resources/{kind}", params=params)["items"]
    _print(items, args.output, _COLUMNS["resources"])


def _cmd_apply(client: AdminClient, args: argparse.Namespace) -> None:
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except OSError as exc:
        raise CLIError(f"-f: cannot read {args.file}: {exc.strerror}") from exc
    results = client.call(
        "POST",
        "/v1/admin/resources",
        content=text.encode(),
        headers={"content-type": "application/yaml"},
    )["results"]
    for r in results:
        print(f"{r['kind'].lower()}/{r['namespace']}/{r['name']} {r['action']}")


def _cmd_delete(client: AdminClient, args: argparse.Namespace) -> None:
    kind = _kind(args.kind)
    ns = args.namespace or "default"
    client.call("DELETE", f"/v1/admin/resources/{kind}/{ns}/{args.name}")
    print(f"{kind.lower()}/{ns}/{args.name} deleted")


def _cmd_token(client: AdminClient, args: argparse.Namespace) -> None:
    if args.token_command == "revoke":
        revoked = client.call(
            "POST",
            "/v1/admin/tokens/revoke",
            json={"service": args.service, "namespace": args.namespace},
        )
        print(
            f"{revoked['spiffeId']}: {revoked['revokedRebootstrapCredentials']} "
            "re-bootstrap credential(s) revoked"
        )
        return
    answer = client.call(
        "POST",
        "/v1/admin/tokens",
        json={
            "service": args.service,
            "namespace": args.namespace,
            "ttl": args.ttl,
            "uses": args.uses,
        },
    )
    print(answer["token"])


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}ms"


def _stat_row(label: str, entry: dict[str, Any]) -> list[str]:
    success = entry.get("successRate")
    return [
        label,
        f"{entry['rps']:.2f}",
        "-" if success is None else f"{success * 100:.2f}%",
        _ms(entry.get("p50Ms")),
        _ms(entry.get("p95Ms")),
        _ms(entry.get("p99Ms")),
        str(entry.get("totalRequests", "-")),
    ]


def _svc_name(name: str, namespace: str) -> str:
    return name if namespace == "default" else f"{name}.{namespace}"


def _cmd_stat(client: AdminClient, args: argparse.Namespace) -> None:
    params = {k: v for k, v in (("service", args.service), ("namespace", args.namespace)) if v}
    answer = client.call("GET", "/v1/admin/stats", params=params)
    if args.output == "json":
        print(json.dumps(answer, indent=2))
        return
    rows = [["SERVICE/EDGE", "RPS", "SUCCESS", "P50", "P95", "P99", "TOTAL"]]
    for svc in answer["services"]:
        rows.append(_stat_row(_svc_name(svc["service"], svc["namespace"]), svc))
        for edge in answer["edges"]:
            if (edge["service"], edge["namespace"]) == (svc["service"], svc["namespace"]):
                source = _svc_name(edge["source"], edge["sourceNamespace"])
                rows.append(_stat_row(f"  {source} -> {rows[-1][0].strip()}", edge))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        print("  ".join(cells).rstrip())
    window = answer.get("windowSeconds")
    scraped = answer.get("instances", {})
    print(
        f"# window {'-' if window is None else f'{window:.1f}s'}; "
        f"{scraped.get('scraped', 0)} instance(s) scraped, {scraped.get('failed', 0)} failed"
    )


CHECK_MARKS = {"ok": "\u2714", "warn": "!", "fail": "\u2718"}


def _cmd_check(client: AdminClient, args: argparse.Namespace) -> int:
    try:
        checks = client.call("GET", "/v1/admin/check")["checks"]
    except CLIError as exc:
        checks = [{"name": "control service", "status": "fail", "message": str(exc)}]
    if args.output == "json":
        print(json.dumps(checks, indent=2))
    else:
        for check in checks:
            mark = CHECK_MARKS.get(check["status"], "?")
            print(f"{mark} {check['name']}: {check['message']}")
        failed = sum(1 for c in checks if c["status"] == "fail")
        warned = sum(1 for c in checks if c["status"] == "warn")
        print(f"\n{'FAILED' if failed else 'OK'}: {failed} failure(s), {warned} warning(s)")
    return 1 if any(c["status"] == "fail" for c in checks) else 0


def _cmd_explain(client: AdminClient, args: argparse.Namespace) -> None:
    namespace = args.namespace or "default"
    answer = client.call("GET", f"/v1/admin/explain/{namespace}/{args.service}")
    if args.output == "json":
        print(json.dumps(answer, indent=2))
    else:
        print(yaml.safe_dump(answer, sort_keys=False), end="")


def _cmd_dashboard(args: argparse.Namespace) -> None:
    data_dir = Path(args.data_dir)
    try:
        url = args.control or json.loads((data_dir / "control.json").read_text())["url"]
        token = (data_dir / "admin" / "dashboard.token").read_text().strip()
    except (OSError, ValueError, KeyError) as exc:
        raise CLIError(
            f"no dashboard credentials in {data_dir} ({exc}): is the control service of this "
            "data dir running? Pass --data-dir"
        ) from None
    print(f"{url.rstrip('/')}/dashboard#token={token}")


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
        **{
            field: getattr(args, field) for field in QUOTA_FLAGS if getattr(args, field) is not None
        },
    )
    run(settings, scrape_interval=args.scrape_interval)


def _cmd_sidecar(args: argparse.Namespace) -> int:
    import logging
    import signal

    from meshlib.config import _parse_labels
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
            control_url=args.control or env.get("MESH_CONTROL_URL"),
            token=args.token or env.get("MESH_TOKEN"),
            data_dir=Path(data_dir) if data_dir else None,
            labels=_parse_labels(args.labels or env.get("MESH_LABELS", "")),
            xds_address=args.xds_address,
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

    side = sub.add_parser(
        "sidecar",
        help="run an Envoy sidecar for an unmodified app (agent: identity, secrets, Envoy)",
    )
    side.add_argument("--service", required=True, help="the app's service name")
    side.add_argument("--namespace", default="default")
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
    side.add_argument("--token", help="join token (or MESH_TOKEN)")
    side.add_argument("--sidecar-data-dir", help="key, SVID, Envoy files (or MESH_DATA_DIR)")
    side.add_argument("--labels", help="instance labels, version=v2,zone=a")
    side.add_argument("--xds-address", help="ADS server HOST:PORT (default: asked of control)")
    side.add_argument("--base-id", type=int, help="Envoy --base-id (default: the inbound port)")
    side.add_argument("--envoy-log-level", default="warning")
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
            return _cmd_sidecar(args)
        if args.command == "dashboard":
            _cmd_dashboard(args)
            return 0
        client = AdminClient(Path(args.data_dir), args.control)
        try:
            handler: Callable[[AdminClient, argparse.Namespace], int | None] = {
                "get": _cmd_get,
                "apply": _cmd_apply,
                "delete": _cmd_delete,
                "token": _cmd_token,
                "stat": _cmd_stat,
                "check": _cmd_check,
                "explain": _cmd_explain,
            }[args.command]
            code = handler(client, args)
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
