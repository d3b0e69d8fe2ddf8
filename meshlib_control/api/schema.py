"""The control service's OpenAPI document: request bodies and every error answer.

The endpoints read their bodies themselves (size- and depth-limited, see
:mod:`meshlib_control.api.limits`), so FastAPI cannot infer them: each body is declared here
as JSON Schema and attached with ``openapi_extra``. Every error answer uses the one envelope
``{"error": {"code", "message", "path"?}}`` (:class:`meshlib_control.errors.ApiError`);
FastAPI's own 422 for a malformed query parameter is answered as that envelope with 400
(:func:`validation_error`), and the document says so. The document itself is served at
``/openapi.json`` only to the admin SVID or the dashboard token.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

__all__ = [
    "ADMIN_ERRORS",
    "BODY_ERRORS",
    "WORKLOAD_ERRORS",
    "errors",
    "install_openapi",
    "json_body",
    "validation_error",
]

ENVELOPE = "#/components/schemas/Error"
_ENVELOPE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "examples": ["invalid", "forbidden"]},
                "message": {"type": "string"},
                "path": {"type": "string", "description": "the field the error is about"},
            },
        }
    },
}
_MEANING = {
    304: "the snapshot has not changed within the wait",
    400: "bad input; the message names the field and why",
    401: "no or wrong credentials",
    403: "authenticated, but not allowed",
    404: "no such object",
    409: "conflicts with stored state",
    413: "body larger than the limit",
    429: "a per-identity quota is spent",
}
ADMIN_ERRORS = (400, 403)
WORKLOAD_ERRORS = (400, 401, 403)
BODY_ERRORS = (400, 413)


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for FastAPI: each code with its meaning and the error envelope."""
    answers: dict[int | str, dict[str, Any]] = {}
    for code in sorted(set(codes)):
        answers[code] = {"description": _MEANING[code]}
        if code != 304:
            answers[code]["content"] = {"application/json": {"schema": {"$ref": ENVELOPE}}}
    return answers


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required)}


_STR = {"type": "string"}
BODIES: dict[str, dict[str, Any]] = {
    "sign": _object(
        {
            "csr": {"type": "string", "description": "PEM certificate request"},
            "instanceId": {"type": "string", "maxLength": 64, "pattern": "^[A-Za-z0-9]*$"},
            "token": {"type": "string", "description": "join token (first sign)"},
            "rebootstrap": {"type": "string", "description": "re-bootstrap credential"},
        },
        ("csr",),
    ),
    "register": _object(
        {
            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "address": _STR,
            "labels": {"type": "object", "additionalProperties": _STR},
            "mode": {"type": "string", "enum": ["library", "sidecar"]},
            "plaintextPort": {"type": "integer", "minimum": 1, "maximum": 65535},
            "adminPort": {"type": "integer", "minimum": 1, "maximum": 65535},
        },
        ("port",),
    ),
    "report": _object({"version": _STR, "error": {"type": ["string", "null"]}}, ("version",)),
    "token": _object(
        {
            "service": _STR,
            "namespace": {"type": "string", "default": "default"},
            "ttl": {"type": "string", "default": "1h", "examples": ["10m", "1h", "7d"]},
            "uses": {"type": "integer", "minimum": 1, "default": 1},
        },
        ("service",),
    ),
    "revoke": _object(
        {"service": _STR, "namespace": {"type": "string", "default": "default"}}, ("service",)
    ),
    "ca-root": _object({"cert": {"type": "string", "description": "one PEM root"}}, ("cert",)),
    "ca-retire": _object(
        {"fingerprint": {"type": "string", "description": "sha256:<hex> of a root"}},
        ("fingerprint",),
    ),
}


def json_body(name: str) -> dict[str, Any]:
    """``openapi_extra=`` declaring the JSON request body *name* of :data:`BODIES`."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": BODIES[name]}},
        }
    }


YAML_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "one or more policy documents (YAML, `---`-separated, or JSON)",
        "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}


async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 for a malformed parameter, as the error envelope with 400."""
    detail = exc.errors() if isinstance(exc, RequestValidationError) else []
    first = detail[0] if detail else {}
    where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
    message = f"{where}: {first.get('msg', 'invalid')}"
    return JSONResponse(
        {"error": {"code": "invalid", "message": message, "path": where}}, status_code=400
    )


def _default_errors(path: str, method: str) -> tuple[int, ...]:
    """What an operation declaring no error answers can answer anyway (every route checks
    its caller, and those with a body or a path parameter refuse bad ones)."""
    codes = [400, 403] if path.startswith("/v1/admin/") else [400, 401, 403]
    if "{" in path:
        codes.append(404)
    if method in ("post", "put"):
        codes += [409, 413]
    return tuple(codes)


def install_openapi(app: FastAPI) -> None:
    """Build the document once: the error envelope component, no FastAPI 422 leftovers."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        schemas["Error"] = _ENVELOPE_SCHEMA
        for path, operations in doc.get("paths", {}).items():
            for method, operation in operations.items():
                answers = operation.setdefault("responses", {})
                if answers.pop("422", None) is not None and "400" not in answers:
                    answers.update({str(k): v for k, v in errors(400).items()})
                if not any(code.startswith("4") for code in answers):
                    answers.update(
                        {str(k): v for k, v in errors(*_default_errors(path, method)).items()}
                    )
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
