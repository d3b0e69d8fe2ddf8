"""The admin API client of ``meshctl``: mTLS with the admin SVID of a data dir."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import httpx

from meshlib.errors import MeshError
from meshlib.integrations.httpx import IdentityTransport

__all__ = ["AdminClient", "CLIError"]


class CLIError(MeshError):
    """A command failed; the message is printed as ``error: …``."""


class AdminClient:
    """The admin API of the control service owning *data_dir*."""

    def __init__(self, data_dir: Path, url: str | None = None) -> None:
        info_path = data_dir / "control.json"
        admin = data_dir / "admin"
        try:
            info = json.loads(info_path.read_text())
        except FileNotFoundError:
            raise CLIError(
                f"no control service found in {data_dir} (missing control.json): start one with "
                f"`meshctl --data-dir {data_dir} control serve`, or pass --data-dir"
            ) from None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cafile=admin / "bundle.pem")
        ctx.load_cert_chain(admin / "admin.pem", admin / "admin.key")
        self.url = (url or info["url"]).rstrip("/")
        self._http = httpx.Client(
            transport=IdentityTransport(expected=info["controlId"], tls=lambda: ctx),
            base_url=self.url,
            timeout=15.0,
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One admin call; raises CLIError with the server's message on failure."""
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.HTTPError, MeshError) as exc:
            raise CLIError(f"control service unreachable at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text
            raise CLIError(message)
        return response.json()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()
