"""JSON Web Key Sets: validated once, carried as canonical JSON text.

:func:`check_jwks` is the one validator of a key set, whether it is written inline in a
RequestAuthentication (checked at apply time) or fetched by the control service from a
``jwksUri`` (checked before it replaces the keys already known). Only public signature
keys of the kinds the data planes verify with are accepted: RSA of at least 2048 bits
and EC on P-256, P-384 or P-521. A symmetric (``oct``) key, a private member, an ``alg``
that does not fit the key type or a point off the curve is refused with the path of the
key and the reason, so no data plane ever meets a key it would use unsafely.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshlib.errors import PolicyError
from meshlib.policy.jwtmodel import JWT_ALGORITHMS, MAX_JWKS_BYTES, MAX_JWKS_KEYS, MIN_RSA_BITS

__all__ = ["check_jwks", "parse_jwks_text"]

_CURVES: dict[str, tuple[ec.EllipticCurve, int, str]] = {
    "P-256": (ec.SECP256R1(), 32, "ES256"),
    "P-384": (ec.SECP384R1(), 48, "ES384"),
    "P-521": (ec.SECP521R1(), 66, "ES512"),
}
_PRIVATE = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


def _b64(value: Any, path: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise PolicyError(path, "must be a non-empty base64url string")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise PolicyError(path, "is not valid base64url") from exc


def _check_key(key: Any, path: str) -> str | None:
    """Validate one JWK; returns its ``kid`` (or None)."""
    if not isinstance(key, Mapping):
        raise PolicyError(path, "must be a mapping (a JWK)")
    kty = key.get("kty")
    if kty == "oct":
        raise PolicyError(f"{path}.kty", "symmetric (HMAC) keys are never accepted")
    if kty not in ("RSA", "EC"):
        raise PolicyError(f"{path}.kty", f"must be RSA or EC, got {str(kty)[:20]!r}")
    for member in _PRIVATE:
        if member in key:
            raise PolicyError(
                f"{path}.{member}", "a private key member: publish only the public key"
            )
    use = key.get("use")
    if use is not None and use != "sig":
        raise PolicyError(f"{path}.use", "must be 'sig' (a signature key)")
    kid = key.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid):
        raise PolicyError(f"{path}.kid", "must be a non-empty string")
    alg = key.get("alg")
    if alg is not None and alg not in JWT_ALGORITHMS:
        raise PolicyError(
            f"{path}.alg", f"must be one of {', '.join(JWT_ALGORITHMS)}, got {str(alg)[:20]!r}"
        )
    if kty == "RSA":
        if alg is not None and alg[:2] not in ("RS", "PS"):
            raise PolicyError(f"{path}.alg", f"{alg} is not an RSA algorithm")
        n = int.from_bytes(_b64(key.get("n"), f"{path}.n"), "big")
        e = int.from_bytes(_b64(key.get("e"), f"{path}.e"), "big")
        if n.bit_length() < MIN_RSA_BITS:
            raise PolicyError(f"{path}.n", f"RSA keys must have at least {MIN_RSA_BITS} bits")
        try:
            rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError as exc:
            raise PolicyError(f"{path}.e", f"not a valid RSA public key: {exc}") from exc
        return kid
    crv = key.get("crv")
    if not isinstance(crv, str) or crv not in _CURVES:
        raise PolicyError(f"{path}.crv", f"must be one of {', '.join(_CURVES)}")
    curve, size, curve_alg = _CURVES[crv]
    if alg is not None and alg != curve_alg:
        raise PolicyError(f"{path}.alg", f"a {crv} key signs with {curve_alg}, not {alg}")
    x, y = _b64(key.get("x"), f"{path}.x"), _b64(key.get("y"), f"{path}.y")
    if len(x) != size or len(y) != size:
        raise PolicyError(path, f"x and y of a {crv} key are {size} bytes each")
    try:
        ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
        ).public_key()
    except ValueError as exc:
        raise PolicyError(path, "the point (x, y) is not on the curve") from exc
    return kid


def check_jwks(value: Any, path: str) -> str:
    """Validate a key set (a mapping, or its JSON text); return its canonical JSON text.

    Raises:
        PolicyError: naming the key and member at fault, e.g. ``jwks.keys[1].kty``.
    """
    if isinstance(value, str):
        value = parse_jwks_text(value, path)
    if not isinstance(value, Mapping):
        raise PolicyError(path, "must be a JSON Web Key Set: a mapping with 'keys'")
    keys = value.get("keys")
    if isinstance(keys, str | bytes) or not isinstance(keys, Sequence):
        raise PolicyError(f"{path}.keys", "required: a list of JWKs")
    if not keys:
        raise PolicyError(f"{path}.keys", "must hold at least one key")
    if len(keys) > MAX_JWKS_KEYS:
        raise PolicyError(f"{path}.keys", f"at most {MAX_JWKS_KEYS} keys")
    try:  # size first: no key of a set too big to carry is even looked at
        text = json.dumps(
            {"keys": list(keys)}, sort_keys=True, separators=(",", ":"), allow_nan=False
        )
    except (TypeError, ValueError, RecursionError) as exc:
        raise PolicyError(path, "must hold only JSON values") from exc
    if len(text) > MAX_JWKS_BYTES:
        raise PolicyError(path, f"must be at most {MAX_JWKS_BYTES} bytes")
    seen: set[str] = set()
    for i, key in enumerate(keys):
        kid = _check_key(key, f"{path}.keys[{i}]")
        if kid is not None:
            if kid in seen:
                raise PolicyError(f"{path}.keys[{i}].kid", f"duplicate kid {kid[:40]!r}")
            seen.add(kid)
    return text


def parse_jwks_text(text: str | bytes, path: str) -> Any:
    """The JSON value of *text*, size-limited; PolicyError when it is not JSON."""
    if len(text) > MAX_JWKS_BYTES:
        raise PolicyError(path, f"must be at most {MAX_JWKS_BYTES} bytes")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PolicyError(path, "is not valid JSON") from exc
