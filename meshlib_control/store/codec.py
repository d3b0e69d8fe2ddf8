"""The JSON forms of the store's records, as the etcd backend keeps them (one key each).

Datetimes are ISO 8601 UTC text (:func:`~meshlib_control.store.records.timestamp`), labels
a sorted object, so two replicas writing the same record write the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from datetime import datetime
from typing import Any, TypeVar

from meshlib_control.ca.rebootstrap import RebootstrapRecord
from meshlib_control.ca.tokens import TokenRecord
from meshlib_control.store.records import (
    CertificateRecord,
    InstanceRecord,
    from_timestamp,
    timestamp,
)

__all__ = ["decode", "encode", "extra_field"]

Record = InstanceRecord | CertificateRecord | TokenRecord | RebootstrapRecord
R = TypeVar("R", InstanceRecord, CertificateRecord, TokenRecord, RebootstrapRecord)


def encode(record: Record, **extra: Any) -> bytes:
    """*record* (and *extra* fields, such as an etcd lease id) as canonical JSON bytes."""
    out: dict[str, Any] = {}
    for name, value in asdict(record).items():
        if isinstance(value, datetime):
            out[name] = timestamp(value)
        elif name == "labels":
            out[name] = dict(value)
        else:
            out[name] = value
    out.update(extra)
    return json.dumps(out, sort_keys=True, separators=(",", ":")).encode()


def decode(cls: type[R], data: bytes) -> R:
    """The record of type *cls* that :func:`encode` wrote as *data* (extra fields ignored)."""
    raw = json.loads(data)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        value = raw[f.name]
        if f.name == "labels":
            value = tuple(sorted(value.items()))
        elif isinstance(value, str) and f.name.endswith(("_at", "_before", "_after", "_seen")):
            value = from_timestamp(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def extra_field(data: bytes, name: str) -> Any:
    """One extra field that :func:`encode` stored beside the record (None if absent)."""
    return json.loads(data).get(name)
