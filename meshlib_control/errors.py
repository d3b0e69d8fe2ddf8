"""Errors of the control service's APIs: an HTTP status, a code, a message, a field path."""

from __future__ import annotations

from typing import Any

from meshlib.errors import MeshError

__all__ = ["ApiError"]


class ApiError(MeshError):
    """A refused API call; rendered as ``{"error": {"code", "message", "path"}}``."""

    def __init__(self, status: int, code: str, message: str, *, path: str | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.path = path
        super().__init__(message)

    def body(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.path:
            error["path"] = self.path
        return {"error": error}
