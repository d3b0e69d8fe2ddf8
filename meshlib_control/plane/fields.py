"""Validation of the registration request's fields: labels and ports."""

from __future__ import annotations

from typing import Any

from meshlib_control.errors import ApiError
from meshlib_control.settings import Settings

__all__ = ["check_labels", "int_field"]


def check_labels(labels: object, settings: Settings) -> tuple[tuple[str, str], ...]:
    """*labels* as sorted pairs, or ApiError naming the label and the limit it breaks."""
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ApiError(400, "invalid", "labels: must map strings to strings", path="labels")
    if len(labels) > settings.max_labels:
        raise ApiError(
            400,
            "too-many-labels",
            f"labels: {len(labels)} labels, more than the limit of {settings.max_labels} "
            "per instance (--max-labels)",
            path="labels",
        )
    total = 0
    for key, value in labels.items():
        key_bytes, value_bytes = len(key.encode()), len(value.encode())
        if not key_bytes or key_bytes > settings.max_label_key_bytes:
            raise ApiError(
                400,
                "label-too-large",
                f"labels: key {key[:40]!r}… must be 1..{settings.max_label_key_bytes} bytes "
                f"(--max-label-key-bytes), got {key_bytes}",
                path="labels",
            )
        if value_bytes > settings.max_label_value_bytes:
            raise ApiError(
                400,
                "label-too-large",
                f"labels.{key}: value of {value_bytes} bytes, more than the limit of "
                f"{settings.max_label_value_bytes} (--max-label-value-bytes)",
                path=f"labels.{key}",
            )
        total += key_bytes + value_bytes
    if total > settings.max_labels_bytes:
        raise ApiError(
            400,
            "label-too-large",
            f"labels: {total} bytes of keys and values, more than the limit of "
            f"{settings.max_labels_bytes} per instance (--max-labels-bytes)",
            path="labels",
        )
    return tuple(sorted(labels.items()))


def int_field(body: dict[str, Any], name: str, *, optional: bool) -> int | None:
    """The port field *name* of *body* (None when absent and *optional*), or ApiError."""
    value = body.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise ApiError(400, "invalid", f"{name}: must be an integer port 0..65535", path=name)
    return value
