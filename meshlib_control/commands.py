"""``meshctl``'s admin commands: get, apply, delete, token, stat, check, explain, dashboard.

Each command prints its answer on stdout and raises :class:`CLIError` on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from meshlib.policy.model import KINDS
from meshlib_control.admin_client import AdminClient, CLIError

__all__ = ["ADMIN_COMMANDS", "cmd_dashboard"]

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
    "requestauthentications": "RequestAuthentication",
    "externalservices": "ExternalService",
    "ra": "RequestAuthentication",
    "tp": "TrafficPolicy",
    "authz": "AuthorizationPolicy",
    "pa": "PeerAuthentication",
    "rl": "RateLimit",
}


def _kind(name: str) -> str:
    kind = _KIND_ALIASES.get(name.lower())
    if kind is None:
        choices = ", ".join([*KINDS, *sorted(set(LISTINGS.values()))])
        raise CLIError(f"unknown kind {name!r}; one of: {choices}")
    return kind


def _dump(data: Any, output: str) -> bool:
    """Print *data* as JSON or YAML when *output* asks for it; False for ``table``."""
    if output == "json":
        print(json.dumps(data, indent=2))
        return True
    if output == "yaml":
        print(yaml.safe_dump(data, sort_keys=False), end="")
        return True
    return False


def _cell(value: Any) -> str:
    if value is None or value == []:
        return "-"
    if isinstance(value, list | tuple):
        return ",".join(_cell(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _table(rows: list[list[str]], right: int = 0) -> None:
    """Print *rows* (the first is the header) in aligned columns; the last *right* of each
    row are right-aligned (numbers)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    split = len(widths) - right
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row[:split], widths[:split], strict=True)]
        cells += [c.rjust(w) for c, w in zip(row[split:], widths[split:], strict=True)]
        print("  ".join(cells).rstrip())


def _print(items: list[dict[str, Any]], output: str, columns: Sequence[tuple[str, str]]) -> None:
    if output == "yaml":  # one YAML document per item, as kubectl prints a list of objects
        print(yaml.safe_dump_all(items, sort_keys=False), end="")
        return
    if _dump(items, output):
        return
    rows = [[h for h, _ in columns]]
    for item in items:
        row = []
        for _, key in columns:
            value: Any = item
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            row.append(_cell(value))
        rows.append(row)
    _table(rows)


_COLUMNS = {
    "services": [("NAMESPACE", "namespace"), ("NAME", "name"), ("INSTANCES", "instances"),
                 ("MODES", "modes")],
    "instances": [("ID", "id"), ("SERVICE", "service"), ("NAMESPACE", "namespace"),
                  ("ADDRESS", "address"), ("PORT", "port"), ("ADMIN", "adminPort"),
                  ("MODE", "mode"),
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
    answer = client.call(
        "POST",
        "/v1/admin/resources",
        params={"dryRun": "true"} if args.dry_run else None,
        content=text.encode(),
        headers={"content-type": "application/yaml"},
    )
    for warning in answer.get("warnings", []):
        print(f"warning: {warning['message']}", file=sys.stderr)
    if _dump(answer, args.output):
        return
    suffix = " (dry run)" if args.dry_run else ""
    for r in answer["results"]:
        print(f"{r['kind'].lower()}/{r['namespace']}/{r['name']} {r['action']}{suffix}")


def _cmd_delete(client: AdminClient, args: argparse.Namespace) -> None:
    kind = _kind(args.kind)
    ns = args.namespace or "default"
    answer = client.call("DELETE", f"/v1/admin/resources/{kind}/{ns}/{args.name}")
    if not _dump(answer, args.output):
        print(f"{kind.lower()}/{ns}/{args.name} deleted")


def _cmd_token(client: AdminClient, args: argparse.Namespace) -> None:
    if args.token_command == "revoke":
        revoked = client.call(
            "POST",
            "/v1/admin/tokens/revoke",
            json={"service": args.service, "namespace": args.namespace},
        )
        if not _dump(revoked, args.output):
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
    if not _dump(answer, args.output):
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
    if _dump(answer, args.output):
        return
    rows = [["SERVICE/EDGE", "RPS", "SUCCESS", "P50", "P95", "P99", "TOTAL"]]
    for svc in answer["services"]:
        name = _svc_name(svc["service"], svc["namespace"])
        rows.append(_stat_row(name, svc))
        for edge in answer["edges"]:
            if (edge["service"], edge["namespace"]) == (svc["service"], svc["namespace"]):
                source = _svc_name(edge["source"], edge["sourceNamespace"])
                rows.append(_stat_row(f"  {source} -> {name}", edge))
    _table(rows, right=len(rows[0]) - 1)
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
    if not _dump(checks, args.output):
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
    # The answer is nested (per instance: its policy); its table form is the YAML text.
    if not _dump(answer, args.output):
        print(yaml.safe_dump(answer, sort_keys=False), end="")


def cmd_dashboard(args: argparse.Namespace) -> None:
    data_dir = Path(args.data_dir)
    try:
        given = args.control or os.environ.get("MESH_CONTROL_URL")
        url = given.split(",")[0].strip() if given else None
        url = url or json.loads((data_dir / "control.json").read_text())["url"]
        token = (data_dir / "admin" / "dashboard.token").read_text().strip()
    except (OSError, ValueError, KeyError) as exc:
        raise CLIError(
            f"no dashboard credentials in {data_dir} ({exc}): is the control service of this "
            "data dir running? Pass --data-dir (or set MESHCTL_DATA_DIR)"
        ) from None
    print(f"{url.rstrip('/')}/dashboard#token={token}")


ADMIN_COMMANDS: dict[str, Callable[[AdminClient, argparse.Namespace], int | None]] = {
    "get": _cmd_get,
    "apply": _cmd_apply,
    "delete": _cmd_delete,
    "token": _cmd_token,
    "stat": _cmd_stat,
    "check": _cmd_check,
    "explain": _cmd_explain,
}
