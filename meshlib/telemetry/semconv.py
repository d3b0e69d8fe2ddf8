"""The OpenTelemetry semantic conventions meshlib follows, as plain constants and helpers.

meshlib follows the HTTP conventions (stable) and the RPC conventions as published in
semantic conventions **1.44.0** (``opentelemetry-semantic-conventions`` 0.66b2, whose
:class:`~opentelemetry.semconv.schemas.Schemas` names it): the tracer and meter carry
:data:`SCHEMA_URL`. The package itself is not imported at run time (it is only a test
dependency); ``tests/telemetry/test_semconv.py`` checks every name here against it, field
by field, and that none of them is deprecated there.

RPC in 1.44: ``rpc.system.name`` (``rpc.system`` is deprecated), ``rpc.method`` is the
fully-qualified ``pkg.Service/Method`` (``rpc.service`` is deprecated), and the status is
``rpc.response.status_code``, the status code's name as a string (``rpc.grpc.status_code``,
an integer, is deprecated).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "GRPC_SERVER_ERRORS",
    "HTTP_METHODS",
    "SCHEMA_URL",
    "grpc_error_type",
    "http_method",
    "redact_url",
    "server_of_url",
]

SCHEMA_URL = "https://opentelemetry.io/schemas/1.44.0"

# Attribute names (the conventions' spelling).
HTTP_REQUEST_METHOD = "http.request.method"
HTTP_REQUEST_METHOD_ORIGINAL = "http.request.method_original"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
HTTP_ROUTE = "http.route"
URL_FULL = "url.full"
URL_PATH = "url.path"
URL_SCHEME = "url.scheme"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
CLIENT_ADDRESS = "client.address"
NETWORK_PROTOCOL_VERSION = "network.protocol.version"
ERROR_TYPE = "error.type"
RPC_SYSTEM_NAME = "rpc.system.name"
RPC_METHOD = "rpc.method"
RPC_RESPONSE_STATUS_CODE = "rpc.response.status_code"

OTHER = "_OTHER"
"""What an HTTP method the conventions do not list is recorded as (bounded labels)."""

HTTP_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)
"""The methods the HTTP conventions know; any other is ``_OTHER``."""

# gRPC codes that are the server's fault: the conventions' error condition for server spans
# (a client span's error is any code but OK).
GRPC_SERVER_ERRORS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)

_DEFAULT_PORTS = {"http": 80, "https": 443}


def http_method(method: str) -> str:
    """*method* when the conventions know it, else ``_OTHER`` (labels stay bounded)."""
    return method if method in HTTP_METHODS else OTHER


def grpc_error_type(code: str, *, server: bool) -> str | None:
    """``error.type`` of a gRPC call ending in *code*, or None when it is no error."""
    if code == "OK" or (server and code not in GRPC_SERVER_ERRORS):
        return None
    return code


def server_of_url(url: Any) -> tuple[str | None, int | None]:
    """``(server.address, server.port)`` of a URL (an ``httpx.URL`` or its text).

    The port is the URL's, else the scheme's default (80/443).
    """
    host = getattr(url, "host", None)
    if host is not None:
        port = getattr(url, "port", None)
        scheme = getattr(url, "scheme", "")
    else:
        from urllib.parse import urlsplit

        parts = urlsplit(str(url))
        host, scheme = parts.hostname, parts.scheme
        try:
            port = parts.port
        except ValueError:
            port = None
    if not host:
        return None, None
    return host, port if port is not None else _DEFAULT_PORTS.get(scheme)


REDACTED = "REDACTED"
_SENSITIVE_QUERY = frozenset({"AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"})
"""Query keys whose values the HTTP conventions ask to redact in ``url.full``."""


def redact_url(text: str) -> str:
    """*text* as ``url.full``: credentials in the authority and signing query values
    replaced by ``REDACTED``, as the HTTP conventions ask (only looked at when present)."""
    scheme, sep, rest = text.partition("://")
    if sep and "@" in rest.partition("/")[0].partition("?")[0]:
        authority, slash, tail = rest.partition("/")
        _, _, host = authority.rpartition("@")
        text = f"{scheme}://{REDACTED}:{REDACTED}@{host}{slash}{tail}"
    head, mark, query = text.partition("?")
    if not mark or not any(key in query for key in _SENSITIVE_QUERY):
        return text
    query, hash_mark, fragment = query.partition("#")
    parts = []
    for pair in query.split("&"):
        key, eq, _value = pair.partition("=")
        parts.append(f"{key}={REDACTED}" if eq and key in _SENSITIVE_QUERY else pair)
    return f"{head}?{'&'.join(parts)}{hash_mark}{fragment}"
