"""Limits on request bodies, checked before (or instead of) parsing them whole.

A body is refused by its ``Content-Length`` before a byte is read, and a chunked body stops
being read at the cap (413). JSON is parsed only up to :data:`MAX_JSON_DEPTH` levels and
YAML is scanned event by event (no recursion, no alias expansion) for its depth and for the
number of nodes its aliases would expand to, so a "billion laughs" document or a
10,000-deep one is a 400 naming ``body``, never a 500 or a hang. Everything here but
:func:`read_body` is pure.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import yaml

from meshlib_control.errors import ApiError

__all__ = [
    "MAX_BODY",
    "MAX_JSON_DEPTH",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "check_yaml",
    "json_depth",
    "parse_json_object",
    "read_body",
]

MAX_BODY = 1024 * 1024
MAX_JSON_DEPTH = 32  # our JSON bodies are two or three levels deep
MAX_YAML_DEPTH = 64  # resources are a dozen levels deep at most
MAX_YAML_NODES = 200_000  # scalars and collections after alias expansion, whole batch


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "too-large", f"body: larger than the limit of {limit} bytes", path="body")


async def read_body(headers: Any, chunks: AsyncIterator[bytes], *, limit: int = MAX_BODY) -> bytes:
    """The request body, at most *limit* bytes; ApiError 413 as soon as it is longer.

    Args:
        headers: the request's headers (``Content-Length`` is trusted only to refuse early).
        chunks: the body as it arrives (Starlette's ``request.stream()``).
    """
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiError(400, "invalid", "Content-Length: not a number", path="body")
        if int(declared) > limit:
            raise _too_large(limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


def json_depth(value: object) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            deepest = max(deepest, depth)
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json_object(raw: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """*raw* as a JSON object nested at most *max_depth* levels; ApiError 400 otherwise."""
    try:
        body = json.loads(raw or b"{}")
    except RecursionError:
        raise ApiError(
            400, "invalid", f"body: JSON nested deeper than {max_depth} levels", path="body"
        ) from None
    except ValueError as exc:  # also an integer of more than 4300 digits
        raise ApiError(400, "invalid", f"body: not JSON ({exc})", path="body") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "invalid", "body: must be a JSON object", path="body")
    if json_depth(body) > max_depth:
        raise ApiError(
            400, "invalid", f"body: JSON nested deeper than {max_depth} levels", path="body"
        )
    return body


def check_yaml(
    text: str, *, max_depth: int = MAX_YAML_DEPTH, max_nodes: int = MAX_YAML_NODES
) -> None:
    """Refuse YAML too deep, or whose aliases expand to more than *max_nodes* nodes.

    Syntax errors are left to the decoder, which reports them with line and column.

    Raises:
        ApiError: 400 naming ``documents[i]`` and the limit.
    """
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    # Every node is counted once where it appears, an alias as the size of what it names;
    # a collection's size is the count reached at its end minus the count at its start.
    sizes: dict[str, int] = {}  # anchor → nodes it stands for
    open_: list[tuple[str | None, int]] = []  # collections being read: (anchor, count at start)
    total = 0
    document = -1

    def refuse(reason: str) -> ApiError:
        where = f"documents[{max(document, 0)}]"
        return ApiError(400, "invalid", f"{where}: {reason}", path=where)

    def add(nodes: int) -> None:
        nonlocal total
        total += nodes
        if total > max_nodes:
            raise refuse(f"YAML expands to more than {max_nodes} nodes (aliases?); refused")

    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.DocumentStartEvent):
                document += 1
            elif isinstance(event, yaml.AliasEvent):
                add(sizes.get(event.anchor or "", 1))
            elif isinstance(event, yaml.ScalarEvent):
                if event.anchor:
                    sizes[event.anchor] = 1
                add(1)
            elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
                open_.append((event.anchor, total))
                if len(open_) > max_depth:
                    raise refuse(f"YAML nested deeper than {max_depth} levels")
                add(1)
            elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
                anchor, started = open_.pop()
                if anchor:
                    sizes[anchor] = total - started
    except yaml.YAMLError:
        return  # the decoder says where and why
