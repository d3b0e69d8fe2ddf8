"""Real JWT material for tests: RS256/ES256 signers, key sets, and a real JWKS HTTP server."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://issuer.test"


class Signer:
    """One signing key (RS256: RSA 2048; ES256: P-256) with its public JWK."""

    def __init__(self, alg: str = "ES256", kid: str | None = "k1") -> None:
        self.alg = alg
        self.kid = kid
        self.key: Any
        if alg.startswith(("RS", "PS")):
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            public = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        else:
            self.key = ec.generate_private_key(ec.SECP256R1())
            public = json.loads(ECAlgorithm.to_jwk(self.key.public_key()))
        public.update(alg=alg, use="sig")
        if kid is not None:
            public["kid"] = kid
        self.public = public

    def token(
        self,
        sub: str = "alice",
        *,
        iss: str = ISSUER,
        aud: str | list[str] | None = "api",
        lifetime: float = 300,
        nbf: float | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"iss": iss, "sub": sub, "iat": now, "exp": now + int(lifetime)}
        if aud is not None:
            body["aud"] = aud
        if nbf is not None:
            body["nbf"] = int(nbf)
        body.update(claims)
        extra = dict(headers or {})
        if self.kid is not None:
            extra.setdefault("kid", self.kid)
        return jwt.encode(body, self.key, algorithm=self.alg, headers=extra)


def jwks(*signers: Signer) -> dict[str, Any]:
    """The public key set of *signers*."""
    return {"keys": [s.public for s in signers]}


def jwks_text(*signers: Signer) -> str:
    return json.dumps(jwks(*signers))


class JwksServer:
    """A real HTTP server on 127.0.0.1 serving a key set that the test can change or break."""

    def __init__(self, *signers: Signer) -> None:
        self.body = jwks_text(*signers).encode()
        self.status = 200
        self.hits = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                body = owner.body if owner.status == 200 else b"down"
                self.send_response(owner.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def serve(self, *signers: Signer) -> None:
        """Serve the key set of *signers* from now on."""
        self.body = jwks_text(*signers).encode()

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
