"""``meshctl``'s argument parsers: global flags, the admin commands, help formatting.

Global flags (``--data-dir``, ``--control``, ``--debug``) are defined on the top parser and
again, with ``SUPPRESS`` defaults, on every subcommand's parser, so they may be given
before or after the subcommand and a value given before is not overwritten by a default
after. Every admin command that prints data takes the same ``-o/--output table|yaml|json``.
"""

from __future__ import annotations

import argparse
import os
import textwrap
from collections.abc import Iterator

__all__ = [
    "OUTPUTS",
    "HelpFormatter",
    "add_admin_parsers",
    "add_global_flags",
    "default_data_dir",
    "spread_global_flags",
    "subparsers",
    "tidy_metavars",
    "wrap_text",
]

OUTPUTS = ("table", "yaml", "json")
_GLOBAL_DESTS = ("data_dir", "control", "debug")


def wrap_text(text: str) -> str:
    """*text* filled to 79 columns (descriptions; epilogs keep their line breaks)."""
    return textwrap.fill(text, 79)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks; appends ``(default: …)`` where a default means something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" not in text
            and default not in (None, False, argparse.SUPPRESS)
            and not isinstance(action, argparse._VersionAction | argparse._HelpAction)
            and (action.option_strings or action.nargs in ("?", "*"))
        ):
            text += " (default: %(default)s)"
        return text


def default_data_dir() -> str:
    """``$MESHCTL_DATA_DIR``, else ``$MESH_DATA_DIR``, else ``.mesh``."""
    return os.environ.get("MESHCTL_DATA_DIR") or os.environ.get("MESH_DATA_DIR") or ".mesh"


def add_global_flags(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """The global flags on *parser* (with *suppress*: no defaults, for subcommands)."""
    taken = parser._option_string_actions

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    if "--data-dir" not in taken:
        parser.add_argument(
            "--data-dir",
            metavar="DIR",
            default=default(default_data_dir()),
            help="the control service's data dir (admin SVID, control.json); env "
            "MESHCTL_DATA_DIR or MESH_DATA_DIR",
        )
    if "--control" not in taken:
        parser.add_argument(
            "--control",
            metavar="URL",
            default=default(None),
            help="control service URL, or a comma list tried in order (default: "
            "$MESH_CONTROL_URL, else the URL in the data dir)",
        )
    if "--debug" not in taken:
        parser.add_argument(
            "--debug",
            action="store_true",
            default=default(False),
            help="print tracebacks with errors (or MESH_LOG_LEVEL=debug)",
        )


def subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every ``(name, parser)`` below *parser*, depth first (aliases once)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, child in action.choices.items():
                if id(child) in seen:
                    continue
                seen.add(id(child))
                yield name, child
                yield from subparsers(child)


def spread_global_flags(parser: argparse.ArgumentParser) -> None:
    """Accept the global flags after any subcommand too (where it has no flag of that name),
    and give every value flag a plain metavar (``--app-port PORT``, not ``APP_PORT``)."""
    for _name, child in subparsers(parser):
        add_global_flags(child, suppress=True)
        tidy_metavars(child)


def tidy_metavars(parser: argparse.ArgumentParser) -> None:
    """A metavar for each value flag that has none: PORT, N, or the dest's last word."""
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0 or action.choices or action.metavar:
            continue
        words = action.dest.split("_")
        if action.type is int:
            action.metavar = "PORT" if words[-1] == "port" else "N"
        else:
            action.metavar = words[-1].upper()


def _output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=OUTPUTS, default="table", help="output format")


def _namespace(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("-n", "--namespace", metavar="NS", help=what)


def add_admin_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The admin commands: token, apply, get, delete, stat, check, explain, dashboard."""
    fmt = HelpFormatter
    token = sub.add_parser("token", help="join tokens", formatter_class=fmt)
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    create = token_sub.add_parser(
        "create",
        help="create a join token; prints it alone",
        epilog="examples:\n  meshctl token create --service orders --ttl 10m --uses 3",
        formatter_class=fmt,
    )
    create.add_argument("--service", required=True, metavar="NAME", help="the workload's service")
    create.add_argument("--namespace", default="default", metavar="NS", help="its namespace")
    create.add_argument("--ttl", default="1h", metavar="TTL", help="how long it can be used")
    create.add_argument("--uses", type=int, default=1, metavar="N", help="how many joins")
    _output(create)
    revoke = token_sub.add_parser(
        "revoke",
        help="revoke an identity's re-bootstrap credentials (an expired SVID cannot rejoin)",
        formatter_class=fmt,
    )
    revoke.add_argument("--service", required=True, metavar="NAME", help="the service")
    revoke.add_argument("--namespace", default="default", metavar="NS", help="its namespace")
    _output(revoke)

    apply = sub.add_parser(
        "apply",
        help="create or update resources from YAML",
        description=wrap_text(
            "Create or update policy resources. Policies naming a service the control "
            "service does not know yet are stored, with a warning (services may register later)."
        ),
        epilog="examples:\n  meshctl apply -f policy.yaml\n  meshctl apply -f - < policy.yaml\n"
        "  meshctl apply -f policy.yaml --dry-run",
        formatter_class=fmt,
    )
    apply.add_argument("-f", "--file", required=True, metavar="FILE", help="file, or - for stdin")
    apply.add_argument(
        "--dry-run",
        action="store_true",
        help="validate on the control service and report what would change; store nothing",
    )
    _output(apply)

    get = sub.add_parser(
        "get",
        help="show resources, services, instances, certificates, tokens, sidecars",
        epilog="examples:\n  meshctl get services\n  meshctl get instances -o json\n"
        "  meshctl get trafficpolicy orders -n shop -o yaml",
        formatter_class=fmt,
    )
    get.add_argument("kind", help="a listing (services, instances, ...) or a resource kind")
    get.add_argument("name", nargs="?", help="one resource by name")
    _namespace(get, "only this namespace (default: all; with a name: default)")
    _output(get)

    delete = sub.add_parser(
        "delete",
        help="delete a resource",
        epilog="examples:\n  meshctl delete trafficpolicy orders -n shop",
        formatter_class=fmt,
    )
    delete.add_argument("kind", help="the resource kind (TrafficPolicy, tp, ...)")
    delete.add_argument("name", help="the resource's name")
    _namespace(delete, "its namespace (default: default)")
    _output(delete)

    stat = sub.add_parser(
        "stat",
        help="golden metrics per service and edge",
        epilog="examples:\n  meshctl stat\n  meshctl stat orders -n shop -o json",
        formatter_class=fmt,
    )
    stat.add_argument("service", nargs="?", help="only this service (and its callers)")
    _namespace(stat, "only this namespace")
    _output(stat)

    check = sub.add_parser(
        "check",
        help="health of the mesh; exit 1 on any failure",
        epilog="examples:\n  meshctl check\n  meshctl check -o json",
        formatter_class=fmt,
    )
    _output(check)

    explain = sub.add_parser(
        "explain",
        help="the policy each instance of a service applies",
        epilog="examples:\n  meshctl explain orders -n shop",
        formatter_class=fmt,
    )
    explain.add_argument("service", help="the service")
    _namespace(explain, "its namespace (default: default)")
    _output(explain)

    sub.add_parser(
        "dashboard",
        help="print the web dashboard's URL (with its access token)",
        formatter_class=fmt,
    )
