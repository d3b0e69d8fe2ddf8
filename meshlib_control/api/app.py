"""The FastAPI app: workload API (``/v1/…``) and admin API (``/v1/admin/…``).

Callers are identified by the client certificate of their TLS connection (the ASGI TLS
extension that :mod:`meshlib.integrations.uvicorn` provides). The admin API admits only
the admin SVID written to the data dir at first start.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from meshlib.errors import IdentityError
from meshlib.identity.spiffe import SpiffeId
from meshlib_control.api.discovery import install_discovery
from meshlib_control.api.limits import MAX_BODY, parse_json_object, read_body
from meshlib_control.api.schema import (
    YAML_BODY,
    errors,
    install_openapi,
    json_body,
    validation_error,
)
from meshlib_control.consul.explain import explain_external, external_checks
from meshlib_control.errors import ApiError
from meshlib_control.observe.checks import explain, run_checks
from meshlib_control.plane import ControlPlane
from meshlib_control.plane.references import policy_checks

__all__ = ["MAX_WAIT", "create_app"]

MAX_WAIT = 60.0
MAX_DEP_NAME = 253 + 1 + 63  # a service name, a dot, a namespace
# The dashboard page is one self-contained file: inline script and style, no other origin.
DASHBOARD_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def dashboard_html() -> str:
    """The dashboard page (``meshlib_control/dashboard/index.html``)."""
    from importlib.resources import files

    return (files("meshlib_control") / "dashboard" / "index.html").read_text(encoding="utf-8")


def peer_of(request: Request) -> SpiffeId | None:
    """The caller's verified SPIFFE ID, or None without a client certificate."""
    tls = request.scope.get("extensions", {}).get("tls")
    if tls is None:
        return None
    spiffe_id = tls.get("spiffe_id")
    if spiffe_id is None:
        if tls.get("client_cert_chain"):
            raise ApiError(
                403,
                "forbidden",
                f"client certificate is not a valid SVID: {tls['client_cert_error']}",
            )
        return None
    try:
        return SpiffeId.parse(spiffe_id)
    except IdentityError as exc:
        raise ApiError(403, "forbidden", str(exc)) from exc


def _require_peer(request: Request) -> SpiffeId:
    peer = peer_of(request)
    if peer is None:
        raise ApiError(401, "unauthenticated", "this call needs mTLS with a workload SVID")
    return peer


async def _json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object: size-limited while it is read, depth-limited parsed."""
    return parse_json_object(await read_body(request.headers, request.stream(), limit=MAX_BODY))


def _source(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


def _dependencies(deps: str | None, max_deps: int) -> tuple[str, ...] | None:
    if not deps:
        return None
    names = {d for d in deps.split(",") if d}
    if len(names) > max_deps:
        raise ApiError(
            400,
            "invalid",
            f"deps: {len(names)} services, more than the limit of {max_deps} (--max-deps)",
            path="deps",
        )
    for name in names:
        if len(name) > MAX_DEP_NAME:
            raise ApiError(
                400, "invalid", f"deps: a name longer than {MAX_DEP_NAME} characters", path="deps"
            )
    return tuple(sorted(names))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("inproc-mesh")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(plane: ControlPlane) -> FastAPI:
    """Build the control service's ASGI app around *plane*."""
    app = FastAPI(
        title="meshlib control service",
        version=_version(),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, to authenticated callers only
    )
    install_openapi(app)
    app.add_exception_handler(RequestValidationError, validation_error)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    def admin(request: Request) -> None:
        peer = peer_of(request)
        if peer != plane.admin_id:
            raise ApiError(
                403,
                "forbidden",
                f"the admin API needs the admin SVID ({plane.admin_id}); caller is "
                f"{peer or 'unauthenticated'}",
            )

    # -------------------------------------------------------------- workload API

    @app.get("/v1/bundle")
    async def bundle() -> dict[str, Any]:
        return plane.bundle()

    @app.post("/v1/sign", openapi_extra=json_body("sign"), responses=errors(400, 401, 403, 413))
    async def sign(request: Request) -> dict[str, Any]:
        return plane.sign(await _json_body(request), peer_of(request))

    @app.put(
        "/v1/instances/{instance_id}",
        openapi_extra=json_body("register"),
        responses=errors(400, 401, 403, 413, 429),
    )
    async def register(instance_id: str, request: Request) -> dict[str, Any]:
        return plane.register(
            instance_id, await _json_body(request), _require_peer(request), source=_source(request)
        )

    @app.delete("/v1/instances/{instance_id}", responses=errors(400, 401, 403, 404))
    async def deregister(instance_id: str, request: Request) -> dict[str, Any]:
        plane.deregister(instance_id, _require_peer(request))
        return {}

    @app.post(
        "/v1/instances/{instance_id}/report",
        openapi_extra=json_body("report"),
        responses=errors(400, 401, 403, 404, 413),
    )
    async def report(instance_id: str, request: Request) -> dict[str, Any]:
        plane.report(instance_id, await _json_body(request), _require_peer(request))
        return {}

    @app.post("/v1/jwks/refresh", responses=errors(400, 401, 403, 413))
    async def jwks_refresh(request: Request) -> dict[str, Any]:
        return plane.jwks_refresh(await _json_body(request), _require_peer(request))

    @app.get("/v1/snapshot", response_model=None, responses=errors(304, 400, 401, 403, 429))
    async def snapshot(
        request: Request, version: str = "", wait: float = 0.0, deps: str | None = None
    ) -> Response | dict[str, Any]:
        peer = _require_peer(request)
        if peer.service is None or peer.namespace is None:
            raise ApiError(403, "forbidden", f"{peer} is not a workload identity")
        if not 0 <= wait <= MAX_WAIT:
            raise ApiError(400, "invalid", f"wait: must be 0..{MAX_WAIT:g} seconds", path="wait")
        dependencies = _dependencies(deps, plane.settings.max_deps)
        key = (peer.service, peer.namespace, dependencies)
        limit = plane.settings.max_watch_keys_per_identity
        watched = plane.cache.keys_of(peer.service, peer.namespace)
        if key not in watched and len(watched) >= limit:
            raise ApiError(
                429,
                "quota-exceeded",
                f"deps: {peer} already watches {len(watched)} distinct dependency sets, the "
                f"limit per identity (--max-watch-keys-per-identity {limit}); idle ones are "
                "forgotten after 5 minutes",
                path="deps",
            )
        found = await plane.cache.watch(key, version, wait)
        if found is None:
            return Response(status_code=304)
        return Response(plane.cache.body(key, found), media_type="application/json")

    # -------------------------------------------------------------- admin API

    @app.post("/v1/admin/resources", openapi_extra=YAML_BODY, responses=errors(400, 403, 413))
    async def apply(
        request: Request, dry_run: Annotated[bool, Query(alias="dryRun")] = False
    ) -> dict[str, Any]:
        """Create or update resources; with ``dryRun=true`` validate only, store nothing."""
        admin(request)
        raw = await read_body(request.headers, request.stream(), limit=MAX_BODY)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError(400, "invalid", "body: not UTF-8 text", path="body") from exc
        return plane.apply(text, dry_run=dry_run)

    @app.get("/v1/admin/resources/{kind}", responses=errors(400, 403, 404))
    async def get(
        kind: str, request: Request, namespace: str | None = None, name: str | None = None
    ) -> dict[str, Any]:
        admin(request)
        return {"items": plane.get(kind, namespace, name)}

    @app.delete("/v1/admin/resources/{kind}/{namespace}/{name}", responses=errors(400, 403, 404))
    async def delete(kind: str, namespace: str, name: str, request: Request) -> dict[str, Any]:
        admin(request)
        plane.delete(kind, namespace, name)
        return {"deleted": {"kind": kind, "namespace": namespace, "name": name}}

    @app.post("/v1/admin/tokens", openapi_extra=json_body("token"), responses=errors(400, 403, 413))
    async def create_token(request: Request) -> dict[str, Any]:
        admin(request)
        return plane.create_token(await _json_body(request))

    @app.post(
        "/v1/admin/tokens/revoke",
        openapi_extra=json_body("revoke"),
        responses=errors(400, 403, 413),
    )
    async def revoke_rebootstrap(request: Request) -> dict[str, Any]:
        admin(request)
        return plane.revoke_rebootstrap(await _json_body(request))

    @app.get("/v1/admin/ca", responses=errors(403))
    async def ca_status(request: Request) -> dict[str, Any]:
        admin(request)
        return plane.ca_status()

    @app.post(
        "/v1/admin/ca/roots", openapi_extra=json_body("ca-root"), responses=errors(400, 403, 413)
    )
    async def add_root(request: Request) -> dict[str, Any]:
        admin(request)
        return plane.add_root(await _json_body(request))

    @app.post(
        "/v1/admin/ca/roots/retire",
        openapi_extra=json_body("ca-retire"),
        responses=errors(400, 403, 404, 409, 413),
    )
    async def retire_root(request: Request) -> dict[str, Any]:
        admin(request)
        return plane.retire_root(await _json_body(request))

    def dashboard_reader(request: Request) -> None:
        """Read-only dashboard data: the dashboard bearer token, or the admin SVID."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            if plane.dashboard_token_ok(token.strip()):
                return
            raise ApiError(401, "unauthenticated", "Authorization: wrong dashboard token")
        if peer_of(request) == plane.admin_id:
            return
        raise ApiError(
            401,
            "unauthenticated",
            "dashboard data needs the dashboard token (Authorization: Bearer …, see "
            "`meshctl dashboard`) or the admin SVID",
        )

    install_discovery(app, plane, dashboard_reader)

    @app.get("/v1/admin/stats", responses=errors(400, 403))
    async def stats(
        request: Request, service: str | None = None, namespace: str | None = None
    ) -> dict[str, Any]:
        admin(request)
        return plane.observer.stats(service, namespace)

    @app.get("/v1/admin/check", responses=errors(403))
    async def check(request: Request) -> dict[str, Any]:
        admin(request)
        checks = await run_checks(plane, plane.observer)
        state = plane.state()
        checks.extend(policy_checks(plane.store, state.resources, state.instances))
        if plane.consul is not None:
            checks.extend(plane.consul.checks())
        checks.extend(external_checks(state, plane.consul is not None))
        return {"checks": checks}

    @app.get("/v1/admin/metrics", response_class=Response, responses=errors(403))
    async def control_metrics(request: Request) -> Response:
        admin(request)  # the control service's own series (today: the Consul link's)
        text = plane.consul.prometheus_text() if plane.consul is not None else ""
        return Response(text, media_type="text/plain; version=0.0.4")

    @app.get("/v1/admin/explain/{namespace}/{service}", responses=errors(400, 403, 404))
    async def explain_service(namespace: str, service: str, request: Request) -> dict[str, Any]:
        admin(request)
        external = explain_external(plane.state(), namespace, service)
        try:
            answer = await explain(plane, plane.observer, namespace, service)
        except ApiError as exc:  # an ExternalService has no instances of the mesh
            if external is None or exc.status != 404:
                raise
            answer = {"service": service, "namespace": namespace, "instances": []}
        if external is not None:
            answer["external"] = external
        return answer

    @app.get("/v1/admin/dashboard-data", responses=errors(401, 403))
    async def dashboard_data(request: Request) -> JSONResponse:
        dashboard_reader(request)
        body = {
            "stats": plane.observer.stats(),
            "instances": plane.observer.instance_rows(),
            "services": plane.list_services(),
            "trustDomain": plane.trust_domain,
        }
        return JSONResponse(body, headers={"cache-control": "no-store"})

    @app.get("/dashboard")
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(
            dashboard_html(),
            headers={
                "cache-control": "no-store",
                "content-security-policy": DASHBOARD_CSP,
                "referrer-policy": "no-referrer",
                "x-content-type-options": "nosniff",
            },
        )

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_document(request: Request) -> JSONResponse:
        """This API's OpenAPI document: for the admin SVID or the dashboard token only."""
        dashboard_reader(request)
        return JSONResponse(app.openapi())

    @app.get("/v1/admin/{listing}", responses=errors(403, 404))
    async def listing(listing: str, request: Request) -> dict[str, Any]:
        admin(request)
        lists = {
            "services": plane.list_services,
            "instances": plane.list_instances,
            "certificates": plane.list_certificates,
            "tokens": plane.list_tokens,
            "sidecars": plane.list_sidecars,
        }
        if listing not in lists:
            raise ApiError(404, "not-found", f"no admin listing {listing!r}")
        return {"items": lists[listing]()}

    return app
