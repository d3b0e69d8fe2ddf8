"""The admin API client of ``meshctl``: mTLS with the admin SVID of a data dir.

The URL is ``--control``, else ``$MESH_CONTROL_URL``, else the one the control service
wrote into the data dir's ``control.json``. A comma list names replicas: a call that
cannot connect to one is tried on the next.
"""

from __future__ import annotations

import json
import os
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
        url = url or os.environ.get("MESH_CONTROL_URL") or None
        info_path = data_dir / "control.json"
        admin = data_dir / "admin"
        try:
            info = json.loads(info_path.read_text())
        except FileNotFoundError:
            raise CLIError(
                f"no control service found in {data_dir} (missing control.json): start one with "
                f"`meshctl control serve --data-dir {data_dir}`, or pass --data-dir (or set "
                "MESHCTL_DATA_DIR)"
            ) from None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cafile=admin / "bundle.pem")
        ctx.load_cert_chain(admin / "admin.pem", admin / "admin.key")
        urls = [u.strip().rstrip("/") for u in (url or info["url"]).split(",") if u.strip()]
        if not urls or not all(u.startswith("https://") for u in urls):
            raise CLIError(f"--control: {url!r} is not an https:// URL (or a comma list of them)")
        self.urls = urls
        self.url = urls[0]
        self._http = httpx.Client(
            transport=IdentityTransport(expected=info["controlId"], tls=lambda: ctx),
            timeout=15.0,
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One admin call; raises CLIError with the server's message on failure."""
        failures = []
        for url in self.urls:
            try:
                response = self._http.request(method, url + path, **kwargs)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failures.append(f"{url}: {exc}")
            except (httpx.HTTPError, MeshError) as exc:
                raise CLIError(f"control service unreachable at {url}: {exc}") from exc
        else:
            raise CLIError(f"control service unreachable at {'; '.join(failures)}")
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
