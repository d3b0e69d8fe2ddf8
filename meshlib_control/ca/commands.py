"""``meshctl ca …``: the offline root and per-replica intermediates, and the trust bundle.

``init`` and ``intermediate`` work on files only (run them where the root is kept, which
need not be a control machine); ``add-root``, ``retire-root`` and ``status`` talk to the
admin API of a running control service. The rotation runbook is in docs/operations.md,
"Rotating the root".
"""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from meshlib.errors import MeshError
from meshlib.identity.svid import certificate_fingerprint
from meshlib_control.admin_client import AdminClient, CLIError

__all__ = ["configure_parser", "run_ca"]


def configure_parser(ca: argparse.ArgumentParser) -> None:
    """Add the ``meshctl ca`` subcommands to *ca*."""
    sub = ca.add_subparsers(dest="ca_command", required=True)
    init = sub.add_parser("init", help="create a root CA in files (keep them offline)")
    init.add_argument("--out", required=True, help="directory for root.pem and root.key")
    init.add_argument("--trust-domain", help="default: the data dir's, else mesh.local")
    init.add_argument("--name", help="the root's common name (e.g. with the year)")
    init.add_argument("--validity", default="3650d", help="lifetime (3650d)")

    inter = sub.add_parser(
        "intermediate", help="issue one control replica's signing CA from a root's files"
    )
    inter.add_argument("--root", required=True, help="directory holding root.pem and root.key")
    inter.add_argument("--out", required=True, help="directory for ca.pem (chain) and ca.key")
    inter.add_argument("--name", required=True, help="the replica's name (in the subject)")
    inter.add_argument("--trust-domain", help="default: the data dir's, else mesh.local")
    inter.add_argument("--validity", default="365d", help="lifetime, capped by the root's (365d)")

    add = sub.add_parser("add-root", help="add a root to the trust bundle every workload gets")
    add.add_argument("--cert", required=True, help="the root certificate (PEM file)")

    retire = sub.add_parser("retire-root", help="remove a root from the trust bundle")
    retire.add_argument("fingerprint", help="sha256:<hex> of the root (see meshctl ca status)")

    status = sub.add_parser("status", help="the bundle's roots, the signing root, expiries")
    status.add_argument(
        "-o", "--output", choices=("table", "yaml", "json"), default="table", help="output format"
    )


def _trust_domain(args: argparse.Namespace) -> str:
    if args.trust_domain:
        return str(args.trust_domain)
    from meshlib_control.settings import DEFAULT_TRUST_DOMAIN

    try:
        info = json.loads((Path(args.data_dir) / "control.json").read_text())
        return str(info["trustDomain"])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_TRUST_DOMAIN


def _validity(text: str) -> timedelta:
    from meshlib_control.ca.tokens import parse_ttl

    try:
        return parse_ttl(text)
    except MeshError as exc:
        raise CLIError(f"--validity: {exc}") from exc


def _print_status(status: dict[str, Any]) -> None:
    print(f"trust domain   {status['trustDomain']}")
    print(f"signing root   {status['signingRoot']}")
    signing = status["signingCertificate"]
    print(f"signing CA     {signing['subject']} (expires {signing['notAfter']})")
    for inter in status["intermediates"]:
        print(f"intermediate   {inter['subject']} (expires {inter['notAfter']})")
    print("trust bundle:")
    for root in status["roots"]:
        mark = " (signing)" if root["signing"] else ""
        print(f"  {root['fingerprint']}  {root['subject']}  expires {root['notAfter']}{mark}")


def run_ca(args: argparse.Namespace) -> int:
    """Run one ``meshctl ca`` subcommand; CLIError on failure."""
    from meshlib_control.ca import offline

    command = args.ca_command
    try:
        if command == "init":
            written = offline.init_root(
                Path(args.out),
                _trust_domain(args),
                validity=_validity(args.validity),
                name=args.name,
            )
            print(f"root {certificate_fingerprint(written.cert)}")
            print(f"wrote {written.cert_path} and {written.key_path} (0600): keep the key offline")
            return 0
        if command == "intermediate":
            written = offline.issue_intermediate(
                Path(args.root),
                Path(args.out),
                _trust_domain(args),
                name=args.name,
                validity=_validity(args.validity),
            )
            print(f"intermediate {written.cert.subject.rfc4514_string()}")
            print(
                f"wrote {written.cert_path} and {written.key_path} (0600); start the replica "
                f"with --ca-cert {written.cert_path} --ca-key {written.key_path}"
            )
            return 0
    except MeshError as exc:
        raise CLIError(str(exc)) from exc
    client = AdminClient(Path(args.data_dir), args.control)
    try:
        if command == "add-root":
            try:
                pem = Path(args.cert).read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise CLIError(f"--cert: cannot read {args.cert}: {exc}") from exc
            _print_status(client.call("POST", "/v1/admin/ca/roots", json={"cert": pem}))
        elif command == "retire-root":
            body = {"fingerprint": args.fingerprint}
            _print_status(client.call("POST", "/v1/admin/ca/roots/retire", json=body))
        else:
            status = client.call("GET", "/v1/admin/ca")
            if args.output == "json":
                print(json.dumps(status, indent=2))
            elif args.output == "yaml":
                import yaml

                print(yaml.safe_dump(status, sort_keys=False), end="")
            else:
                _print_status(status)
    finally:
        client.close()
    return 0
