"""End-user authentication conformance: the same JWT scenarios, same assertions, both modes.

As in test_conformance.py, each scenario runs in **library** mode (in-process ``Mesh``
callers, ``fault_app`` and an in-process gRPC server with meshlib) and in **sidecar** mode
(plain HTTP and gRPC callers through their own Envoy, plain apps behind ``meshctl
sidecar``). One deployment per mode serves every scenario of the module. Tokens are minted
here with real RS256 and ES256 keys; the ``jwksUri`` is a real HTTP server
(tests/jwt_tokens.py) that the control service fetches — neither a workload nor an Envoy
ever fetches it. A rotation (a new ``kid``) reaches both data planes without restarts: in
library mode because the workload reports the unknown kid and the control service refetches
at once (its interval is 300 s there), in sidecar mode through the control service's
refresh interval (``MESH_CONTROL_JWKS_REFRESH``, 0.5 s here).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

import meshlib
from meshlib.integrations import grpc as meshgrpc
from tests.integration.grpc_app import GrpcService, load_protos
from tests.integration.harness import free_port, wait_for
from tests.integration.sidecars import Sidecar, envoy_available
from tests.integration.test_conformance import Caller, Deployment, deployed
from tests.jwt_tokens import ISSUER, JwksServer, Signer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not envoy_available(), reason="envoy binary not installed ([sidecar])"),
]

pb, pb_grpc = load_protos()
GET_ITEM = "/meshlib.demo.inventory.v1.Inventory/GetItem"
WATCH = "/meshlib.demo.inventory.v1.Inventory/WatchStock"
RS, ES = Signer("RS256", "rs-1"), Signer("ES256", "es-1")


def policies(jwks_uri: str) -> str:
    return f"""
apiVersion: meshlib.io/v1
kind: RequestAuthentication
metadata: {{name: users, namespace: default}}
spec:
  jwtRules:
  - issuer: {ISSUER}
    audiences: [api]
    jwksUri: {jwks_uri}
    outputClaimToHeaders: [{{header: x-user, claim: sub}}]
    clockSkew: 2s
---
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {{name: api-users, namespace: default}}
spec:
  service: api
  rules:
  - name: open
    to: {{paths: ["/whoami/open/*"]}}
  - name: users
    from: {{requestPrincipals: ["{ISSUER}/*"]}}
    to: {{paths: ["/whoami/secure/*"]}}
  - name: admins
    to: {{paths: ["/whoami/admin/*"]}}
    when: [{{key: "request.auth.claims[groups]", values: [admins]}}]
---
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {{name: grpc-users, namespace: default}}
spec:
  rules:  # every service of the namespace: grpcapi, and grpcaio (library mode)
  - name: users
    from: {{requestPrincipals: ["*"]}}
    to: {{paths: ["{GET_ITEM}"]}}
  - name: admins
    to: {{paths: ["{WATCH}"]}}
    when: [{{key: "request.auth.claims[groups]", values: [admins]}}]
---
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {{name: banned, namespace: default}}
spec:
  action: DENY
  rules:
  - name: banned-tier
    when: [{{key: "request.auth.claims[org][tier]", values: [banned]}}]
"""


# --------------------------------------------------------------------- the gRPC side


class Inventory(pb_grpc.InventoryServicer):  # type: ignore[misc, name-defined]
    """Answers with the end user as each mode documents it: ``current_peer().auth`` in
    library mode, the ``x-user`` claim header the sidecar set otherwise."""

    def __init__(self, library: bool) -> None:
        self.library = library

    def _user(self, context: Any) -> str:
        if self.library:
            peer = meshgrpc.current_peer()
            auth = peer.auth if peer is not None else None
            sub = auth.claims.get("sub") if auth is not None else None
            return sub if isinstance(sub, str) else ""
        return str(dict(context.invocation_metadata()).get("x-user", ""))

    def GetItem(self, request: Any, context: Any) -> Any:
        return pb.Item(item=request.item, caller=self._user(context))

    def WatchStock(self, request: Any, context: Any) -> Any:
        yield pb.Item(item=request.item, caller=self._user(context))


class GrpcSide:
    """A gRPC server of ``grpcapi`` and a channel to it, in the deployment's mode."""

    def __init__(self, deployment: Deployment, caller: Caller) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.mesh: meshlib.Mesh | None = None
        self.sidecar: Sidecar | None = None
        library = deployment.mode == "library"
        if library:
            self.mesh = meshlib.Mesh(
                service="grpcapi",
                control_url=deployment.control.url,
                token=deployment.control.token("grpcapi"),
                data_dir=deployment.tmp / "grpcapi",
                start_timeout=20,
            ).start()
            self.server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=4),
                interceptors=self.mesh.grpc_server_interceptors(),
            )
            pb_grpc.add_InventoryServicer_to_server(Inventory(True), self.server)
            port = self.mesh.add_secure_port(self.server, "127.0.0.1:0")
            self.server.start()
            self.mesh.set_endpoint("127.0.0.1", port)
            assert caller.mesh is not None
            self.channel = caller.mesh.grpc_channel("grpcapi")
        else:
            pb_grpc.add_InventoryServicer_to_server(Inventory(False), self.server)
            app_port = free_port()
            self.server.add_insecure_port(f"127.0.0.1:{app_port}")
            self.server.start()
            self.sidecar = Sidecar(deployment.control, "grpcapi", deployment.tmp, app_port=app_port)
            self.sidecar.start()
            assert caller.sidecar is not None
            self.channel = grpc.insecure_channel(
                f"127.0.0.1:{caller.sidecar.outbound_port}",
                options=[("grpc.default_authority", "grpcapi")],
            )
        self.stub = pb_grpc.InventoryStub(self.channel)

    def call(self, method: str, token: str | None) -> tuple[str, str]:
        """(status code name, caller user or details) of one call with *token*."""
        metadata = [("authorization", f"Bearer {token}")] if token else []
        try:
            if method == "get":
                reply = self.stub.GetItem(pb.ItemRequest(item="x"), metadata=metadata, timeout=10)
            else:
                [reply] = list(
                    self.stub.WatchStock(pb.ItemRequest(item="x"), metadata=metadata, timeout=10)
                )
        except grpc.RpcError as exc:
            return exc.code().name, exc.details() or ""
        return "OK", reply.caller

    def close(self) -> None:
        self.channel.close()
        self.server.stop(0)
        if self.mesh is not None:
            with contextlib.suppress(Exception):
                self.mesh.clear_endpoint()
            self.mesh.close()
        if self.sidecar is not None:
            self.sidecar.stop()


class JwtMesh:
    """One mode's deployment: the HTTP api, the gRPC api, one caller, the JWKS server."""

    def __init__(self, deployment: Deployment, jwks: JwksServer) -> None:
        self.mode = deployment.mode
        self.deployment = deployment
        self.jwks = jwks
        deployment.control.apply(policies(jwks.url))
        deployment.serve("api")
        self.caller = deployment.caller("user")
        self.grpc = GrpcSide(deployment, self.caller)
        self.caller.wait_endpoints("api", 1)
        self.caller.wait_endpoints("grpcapi", 1)
        # Until the first fetch reached the snapshots, a valid token is refused (no keys).
        wait_for(lambda: self.http("/whoami/open/a", RS.token()).status == 200, 20, "keys")
        wait_for(lambda: self.grpc.call("get", ES.token())[0] == "OK", 20, "gRPC keys")

    def http(self, path: str, token: str | None = None) -> Any:
        headers = {"authorization": f"Bearer {token}"} if token else None
        return self.caller.get("api", path, headers=headers)

    def close(self) -> None:
        self.grpc.close()


@pytest.fixture(scope="module", params=["library", "sidecar"])
def jwt_mesh(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JwtMesh]:
    saved = os.environ.get("MESH_CONTROL_JWKS_REFRESH")
    # Library workloads report an unknown kid (POST /v1/jwks/refresh): the interval is long,
    # so the rotation below is that report's doing. Envoy cannot report one: its keys follow
    # the control service's interval, short here.
    os.environ["MESH_CONTROL_JWKS_REFRESH"] = "300" if request.param == "library" else "0.5"
    tmp = tmp_path_factory.mktemp(f"jwt-{request.param}")
    try:
        with JwksServer(RS, ES) as jwks, deployed(request.param, Path(tmp)) as deployment:
            mesh = JwtMesh(deployment, jwks)
            try:
                yield mesh
            finally:
                mesh.close()
    finally:
        if saved is None:
            os.environ.pop("MESH_CONTROL_JWKS_REFRESH", None)
        else:
            os.environ["MESH_CONTROL_JWKS_REFRESH"] = saved


# --------------------------------------------------------------------- scenarios


def test_valid_tokens_are_admitted_and_the_app_sees_the_user(jwt_mesh: JwtMesh) -> None:
    """RS256 and ES256 tokens pass; the app sees x-user and not the token; no token passes."""
    for signer in (RS, ES):
        outcome = jwt_mesh.http("/whoami/open/a", signer.token("alice"))
        assert outcome.status == 200, outcome
        assert outcome.body["user"] == "alice"
        assert outcome.body["token"] is False  # forwardOriginalToken: false
        if jwt_mesh.mode == "library":
            assert outcome.body["principal"] == f"{ISSUER}/alice"
        assert jwt_mesh.grpc.call("get", signer.token("alice")) == ("OK", "alice")
    anonymous = jwt_mesh.http("/whoami/open/b")
    assert (anonymous.status, anonymous.body["user"]) == (200, None)
    # The prefix is matched case-sensitively, as Envoy does: "bearer <token>" is no token of
    # this rule (unauthenticated, passed on as it came); spaces after the prefix are skipped.
    token = RS.token("zed")
    lower = jwt_mesh.caller.get("api", "/whoami/open/b", {"authorization": f"bearer {token}"})
    assert (lower.status, lower.body["user"], lower.body["token"]) == (200, None, True)
    spaced = jwt_mesh.caller.get("api", "/whoami/open/b", {"authorization": f"Bearer  {token}"})
    assert (spaced.status, spaced.body["user"], spaced.body["token"]) == (200, "zed", False)


BAD_TOKENS: dict[str, tuple[Callable[[], str], str]] = {
    "expired": (lambda: ES.token(lifetime=-60), "Jwt is expired"),
    "not-yet-valid": (lambda: ES.token(nbf=time.time() + 120), "Jwt not yet valid"),
    "wrong-issuer": (
        lambda: ES.token(iss="https://elsewhere.test"),
        "Jwt issuer is not configured",
    ),
    "wrong-audience": (lambda: RS.token(aud="billing"), "Audiences in Jwt are not allowed"),
    "bad-signature": (lambda: RS.token()[:-8] + "AAAAAAAA", "Jwt verification fails"),
    # An RS256 token naming the EC key: a key is used only for tokens of its own type.
    "wrong-key-type": (
        lambda: RS.token(headers={"kid": "es-1"}),
        "Jwks doesn't have key to match kid or alg from Jwt",
    ),
    "unknown-kid": (
        lambda: ES.token(headers={"kid": "nobody"}),
        "Jwks doesn't have key to match kid or alg from Jwt",
    ),
    "alg-none": (
        lambda: unsigned({"alg": "none"}, ""),
        "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
    ),
    "alg-none-signed": (
        lambda: unsigned({"alg": "none"}, "c2ln"),
        "Jwt header [alg] is not supported",
    ),
    # HMAC "signed" with the RSA public key as secret: never verified, no key of that kind.
    "hs256-with-public-key": (
        lambda: unsigned({"alg": "HS256", "kid": "rs-1"}, hs256_signature()),
        "Jwks doesn't have key to match kid or alg from Jwt",
    ),
}


def hs256_signature() -> str:
    """What an attacker computes: HMAC-SHA256 keyed with the RSA key's public PEM."""
    import hashlib
    import hmac

    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    from jwt.utils import base64url_encode

    pem = RS.key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    head, body, _ = unsigned({"alg": "HS256", "kid": "rs-1"}, "").split(".")
    mac = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return base64url_encode(mac).decode()


def unsigned(header: dict[str, str], signature: str) -> str:
    """A token with *header* and *signature* as given (no real signing)."""
    import json

    from jwt.utils import base64url_encode

    claims = {"iss": ISSUER, "sub": "eve", "aud": "api", "exp": int(time.time()) + 60}
    parts = [base64url_encode(json.dumps(x).encode()).decode() for x in (header, claims)]
    return ".".join([*parts, signature])


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_each_invalid_token_is_refused_with_401(jwt_mesh: JwtMesh, case: str) -> None:
    """401 with WWW-Authenticate Bearer and the reason; gRPC UNAUTHENTICATED."""
    make, reason = BAD_TOKENS[case]
    outcome = jwt_mesh.http("/whoami/open/c", make())
    assert outcome.status == 401, outcome
    assert reason in str(outcome.body), outcome.body
    code, details = jwt_mesh.grpc.call("get", make())
    assert code == "UNAUTHENTICATED", (code, details)
    assert reason in details, details


def test_www_authenticate_on_401(jwt_mesh: JwtMesh) -> None:
    """The 401 carries a Bearer challenge naming invalid_token, in both modes."""
    import httpx

    token = ES.token(lifetime=-60)
    caller = jwt_mesh.caller
    if caller.mesh is not None:
        with caller.mesh.client() as client:
            response = client.get(
                "http://api/whoami/open/d", headers={"authorization": f"Bearer {token}"}
            )
    else:
        assert caller.sidecar is not None
        response = httpx.get(
            f"http://127.0.0.1:{caller.sidecar.outbound_port}/whoami/open/d",
            headers={"host": "api", "authorization": f"Bearer {token}"},
            timeout=10,
        )
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer realm=") and 'error="invalid_token"' in challenge


def test_missing_token_is_denied_by_a_request_principals_rule(jwt_mesh: JwtMesh) -> None:
    """No token: 403 where requestPrincipals is required (gRPC PERMISSION_DENIED); with: 200."""
    assert jwt_mesh.http("/whoami/secure/a").status == 403
    assert jwt_mesh.http("/whoami/secure/a", RS.token("bob")).body["user"] == "bob"
    assert jwt_mesh.grpc.call("get", None)[0] == "PERMISSION_DENIED"


def test_claim_based_allow_and_deny(jwt_mesh: JwtMesh) -> None:
    """groups admins allows /admin; other groups do not; a banned tier is denied anywhere."""
    admin = RS.token("root", groups=["admins", "ops"])
    assert jwt_mesh.http("/whoami/admin/a", admin).status == 200
    assert jwt_mesh.http("/whoami/admin/a", RS.token("joe", groups=["users"])).status == 403
    banned = ES.token("mal", groups=["admins"], org={"tier": "banned"})
    assert jwt_mesh.http("/whoami/open/e", banned).status == 403
    assert jwt_mesh.grpc.call("watch", admin) == ("OK", "root")
    assert jwt_mesh.grpc.call("watch", ES.token("joe", groups=["users"]))[0] == "PERMISSION_DENIED"
    assert jwt_mesh.grpc.call("get", banned)[0] == "PERMISSION_DENIED"


def test_key_rotation_reaches_both_data_planes_without_restart(jwt_mesh: JwtMesh) -> None:
    """The JWKS gains a new kid: its tokens are refused, then admitted once the key arrives;
    when the JWKS server is down, the keys already known keep working."""
    rotated = Signer("ES256", f"rotated-{jwt_mesh.mode}")
    token = rotated.token("carol")
    assert jwt_mesh.http("/whoami/open/f", token).status == 401
    jwt_mesh.jwks.serve(RS, ES, rotated)
    wait_for(lambda: jwt_mesh.http("/whoami/open/f", token).status == 200, 15, "rotated key")
    wait_for(lambda: jwt_mesh.grpc.call("get", token)[0] == "OK", 15, "rotated key (gRPC)")
    jwt_mesh.jwks.status = 503
    try:
        time.sleep(1.2)  # two refresh intervals fail
        assert jwt_mesh.http("/whoami/open/g", token).body["user"] == "carol"
        assert jwt_mesh.grpc.call("get", RS.token("dave")) == ("OK", "dave")
    finally:
        jwt_mesh.jwks.status = 200


@pytest.mark.parametrize("jwt_mesh", ["library"], indirect=True)
def test_jwks_refresh_endpoint_refuses_bad_input(jwt_mesh: JwtMesh) -> None:
    """POST /v1/jwks/refresh: 400 naming the field for a missing, foreign or bad value; 401
    without an SVID; a named jwksUri is accepted (scheduled at most once per gap)."""
    import httpx

    from meshlib.integrations.httpx import IdentityTransport

    mesh = jwt_mesh.caller.mesh
    assert mesh is not None
    url = f"{jwt_mesh.deployment.control.url}/v1/jwks/refresh"
    transport = IdentityTransport(
        expected="spiffe://mesh.local/control", tls=mesh.tls.client_context
    )
    with httpx.Client(transport=transport, timeout=10) as http:
        for body, path in (
            ({}, "jwksUri"),
            ({"jwksUri": 7}, "jwksUri"),
            ({"jwksUri": "https://not-named.test/jwks"}, "jwksUri"),
            ({"jwksUri": jwt_mesh.jwks.url, "kid": ["x"]}, "kid"),
        ):
            response = http.post(url, json=body)
            assert response.status_code == 400, response.text
            assert response.json()["error"]["path"] == path
        first = http.post(url, json={"jwksUri": jwt_mesh.jwks.url, "kid": "k"})
        second = http.post(url, json={"jwksUri": jwt_mesh.jwks.url, "kid": "k"})
    assert first.status_code == 200 and second.status_code == 200
    assert second.json() == {"scheduled": False}  # within the gap of the first
    anonymous = httpx.post(url, json={"jwksUri": jwt_mesh.jwks.url}, verify=False, timeout=10)
    assert anonymous.status_code == 401


@pytest.mark.parametrize("jwt_mesh", ["library"], indirect=True)
def test_aio_grpc_server_decides_with_the_same_admission(jwt_mesh: JwtMesh) -> None:
    """Library mode's grpc.aio server: valid token OK, invalid 401-equivalent, none denied."""
    deployment = jwt_mesh.deployment
    server = GrpcService(deployment.control, "grpcaio", deployment.tmp, mode="aio").start()
    try:
        mesh = jwt_mesh.caller.mesh
        assert mesh is not None
        jwt_mesh.caller.wait_endpoints("grpcaio", 1)
        stub = pb_grpc.InventoryStub(mesh.grpc_channel("grpcaio"))

        def call(token: str | None) -> str:
            metadata = [("authorization", f"Bearer {token}")] if token else []
            try:
                stub.GetItem(pb.ItemRequest(item="x"), metadata=metadata, timeout=10)
            except grpc.RpcError as exc:
                return f"{exc.code().name}: {exc.details()}"
            return "OK"

        assert call(ES.token()) == "OK"
        assert call(ES.token(lifetime=-60)) == "UNAUTHENTICATED: Jwt is expired"
        assert call(None).startswith("PERMISSION_DENIED")
    finally:
        server.stop()


@pytest.mark.parametrize("jwt_mesh", ["library"], indirect=True)
def test_meshctl_apply_refuses_a_bad_key_set_and_stores_nothing(jwt_mesh: JwtMesh) -> None:
    """A symmetric key in an inline JWKS: non-zero exit naming the key; the store unchanged."""
    import json

    control = jwt_mesh.deployment.control
    before = json.loads(control.ok("get", "RequestAuthentication", "-o", "json"))
    bad = """
apiVersion: meshlib.io/v1
kind: RequestAuthentication
metadata: {name: hmac, namespace: default}
spec:
  jwtRules:
  - issuer: https://hmac.test
    jwks: '{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'
"""
    result = control.meshctl("apply", "-f", "-", stdin=bad)
    assert result.returncode != 0
    assert "spec.jwtRules[0].jwks.keys[0].kty" in result.stderr, result.stderr
    assert "symmetric (HMAC) keys are never accepted" in result.stderr
    assert json.loads(control.ok("get", "ra", "-o", "json")) == before
