"""``meshctl``: the operator CLI (and ``meshctl control serve``, the control service).

Every command but ``control serve`` talks to the admin API over mTLS with the admin SVID
found in the data dir (``--data-dir``, default ``./.mesh``); ``--control URL`` overrides the
URL recorded there.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
from collections.abc import Sequence
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
    )
    run(settings)


def _parser() -> argparse.ArgumentParser:
    from meshlib_control.settings import DEFAULT_LISTEN, DEFAULT_TRUST_DOMAIN, DEFAULT_XDS_LISTEN

    parser = argparse.ArgumentParser(prog="meshctl", description="Operate a meshlib mesh.")
    parser.add_argument("--data-dir", default=".mesh", help="control service data dir (.mesh)")
    parser.add_argument("--control", help="control service URL (default: from the data dir)")
    sub = parser.add_subparsers(dest="command", required=True)

    control = sub.add_parser("control", help="the control service")
    control_sub = control.add_subparsers(dest="control_command", required=True)
    serve = control_sub.add_parser("serve", help="run the control service")
    serve.add_argument("--data-dir", dest="data_dir_serve")
    serve.add_argument("--listen", default=DEFAULT_LISTEN)
    serve.add_argument("--xds-listen", default=DEFAULT_XDS_LISTEN)
    serve.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    serve.add_argument("--ca-cert", help="plugged-in CA certificate (PEM)")
    serve.add_argument("--ca-key", help="plugged-in CA private key (PEM)")
    serve.add_argument("--svid-ttl", help="workload certificate lifetime (24h)")
    serve.add_argument("--instance-ttl", help="registration lease without heartbeat (15s)")

    token = sub.add_parser("token", help="join tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a join token; prints it alone")
    create.add_argument("--service", required=True)
    create.add_argument("--namespace", default="default")
    create.add_argument("--ttl", default="1h")
    create.add_argument("--uses", type=int, default=1)

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
        client = AdminClient(Path(args.data_dir), args.control)
        try:
            handler = {
                "get": _cmd_get,
                "apply": _cmd_apply,
                "delete": _cmd_delete,
                "token": _cmd_token,
            }[args.command]
            handler(client, args)
        finally:
            client.close()
    except MeshError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
