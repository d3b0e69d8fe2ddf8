"""Decode and encode the ExternalService kind (:mod:`meshlib.policy.externalmodel`)."""

from __future__ import annotations

import re
from typing import Any

from cryptography import x509

from meshlib.errors import PolicyError
from meshlib.policy.externalmodel import (
    EXTERNAL_TLS_MODES,
    MAX_CA_BYTES,
    MAX_CONSUL_TAGS,
    ExternalServiceSpec,
)
from meshlib.policy.fields import _at, _enum, _list, _mapping, _opt, _show, _string

__all__ = ["decode_external_service", "encode_external_service"]

# Consul accepts more, but a name outside this set cannot be a DNS name or a URL host.
_CONSUL_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,126}[A-Za-z0-9])?")
_TAG = re.compile(r"[^\x00-\x1f\x7f]{1,255}")
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def _consul_name(value: Any, path: str) -> str:
    text = _string(value, path)
    if not _CONSUL_NAME.fullmatch(text):
        raise PolicyError(
            path, f"must be a Consul service name (letters, digits, - and _), got {_show(text)}"
        )
    return text


def _tag(value: Any, path: str) -> str:
    text = _string(value, path)
    if not _TAG.fullmatch(text):
        raise PolicyError(path, "must be 1 to 255 characters without control characters")
    return text


def _ca(value: Any, path: str) -> str:
    text = _string(value, path)
    if len(text.encode()) > MAX_CA_BYTES:
        raise PolicyError(path, f"longer than {MAX_CA_BYTES} bytes")
    try:
        certs = x509.load_pem_x509_certificates(text.encode())
    except ValueError as exc:
        raise PolicyError(path, f"must be PEM certificates: {exc}") from exc
    if not certs:
        raise PolicyError(path, "must hold at least one PEM certificate")
    return text


def _sni(value: Any, path: str) -> str:
    text = _string(value, path)
    if not _HOSTNAME.fullmatch(text):
        raise PolicyError(path, f"must be a DNS host name, got {_show(text)}")
    return text.lower()


def decode_external_service(value: Any, path: str, name: str) -> ExternalServiceSpec:
    """The ``spec`` of an ExternalService named *name*.

    Raises:
        PolicyError: naming the field, e.g. ``spec.caCertificate: only with tls: tls``.
    """
    mp = _mapping(value, path, ("consul", "tls", "caCertificate", "sni"))
    consul = _mapping(mp.get("consul", {}), _at(path, "consul"), ("service", "tags"))
    where = _at(path, "consul")
    tags: tuple[str, ...] = ()
    if "tags" in consul:
        raw = _list(consul["tags"], _at(where, "tags"))
        if len(raw) > MAX_CONSUL_TAGS:
            raise PolicyError(_at(where, "tags"), f"at most {MAX_CONSUL_TAGS} tags")
        tags = tuple(_tag(t, f"{_at(where, 'tags')}[{i}]") for i, t in enumerate(raw))
    tls = _opt(mp, "tls", path, lambda v, p: _enum(v, p, EXTERNAL_TLS_MODES), "none")
    if tls == "none":
        for key in ("caCertificate", "sni"):
            if key in mp:
                raise PolicyError(_at(path, key), "only with tls: tls")
    return ExternalServiceSpec(
        consul_service=_opt(consul, "service", where, _consul_name, name),
        tags=tuple(sorted(set(tags))),
        tls=tls,
        ca_certificate=_opt(mp, "caCertificate", path, _ca, ""),
        sni=_opt(mp, "sni", path, _sni, None),
    )


def encode_external_service(spec: ExternalServiceSpec) -> dict[str, Any]:
    """The canonical form: defaults filled in, optional TLS fields only when set."""
    out: dict[str, Any] = {
        "consul": {"service": spec.consul_service, "tags": list(spec.tags)},
        "tls": spec.tls,
    }
    if spec.ca_certificate:
        out["caCertificate"] = spec.ca_certificate
    if spec.sni is not None:
        out["sni"] = spec.sni
    return out
