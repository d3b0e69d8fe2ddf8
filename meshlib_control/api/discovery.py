"""``GET /v1/admin/prometheus/targets``: Prometheus HTTP service discovery for the mesh.

One ``http_sd_configs`` entry finds every instance's admin endpoint
(:mod:`meshlib_control.observe.discovery`). It is read-only observer data, so it takes the
dashboard's credentials: the dashboard bearer token (Prometheus sends it with
``authorization: {credentials_file: …/admin/dashboard.token}``) or the admin SVID.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from meshlib_control.api.schema import errors
from meshlib_control.observe.discovery import scrape_targets
from meshlib_control.plane import ControlPlane

__all__ = ["TARGETS_PATH", "install_discovery"]

TARGETS_PATH = "/v1/admin/prometheus/targets"


class TargetGroup(BaseModel):
    """One ``http_sd_configs`` target group: an instance's admin endpoint and its labels."""

    targets: list[str]
    labels: dict[str, str]


def install_discovery(app: FastAPI, plane: ControlPlane, reader: Callable[[Request], None]) -> None:
    """Add the discovery route to *app*; *reader* admits or refuses the caller."""

    @app.get(TARGETS_PATH, response_model=list[TargetGroup], responses=errors(401, 403))
    async def prometheus_targets(request: Request) -> JSONResponse:
        """Every live instance's admin endpoint, in Prometheus ``http_sd_configs`` format."""
        reader(request)
        body = scrape_targets(plane.state().instances)
        return JSONResponse(body, headers={"cache-control": "no-store"})
