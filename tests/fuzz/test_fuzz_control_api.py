"""schemathesis (and targeted raw bodies) against a real control service over mTLS: no 5xx.

The control service runs as a process (``meshctl control serve``); the admin API is called
with the admin SVID from its data dir, the workload API with the SVID of an in-process
workload that joined with a token. Bounded: a fixed number of derandomized examples per
operation, no example database.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.adapters import HTTPAdapter

import meshlib
from tests.fuzz.test_fuzz_policy import mutated, traffic, trees
from tests.integration.harness import Control

pytestmark = pytest.mark.integration

API_FUZZ = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


class _ContextAdapter(HTTPAdapter):
    """requests over a given SSLContext (the mesh checks SPIFFE IDs, not host names)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)


def _session(context: ssl.SSLContext) -> requests.Session:
    session = requests.Session()
    session.mount("https://", _ContextAdapter(context))
    return session


class Plane:
    def __init__(self, root: Path) -> None:
        self.control = Control(root / "control")
        self.control.start()
        admin = self.control.data_dir / "admin"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cafile=admin / "bundle.pem")
        ctx.load_cert_chain(admin / "admin.pem", admin / "admin.key")
        self.admin = _session(ctx)
        self.mesh = meshlib.Mesh(
            service="orders",
            control_url=self.control.url,
            token=self.control.token("orders"),
            data_dir=root / "orders",
            start_timeout=20,
        ).start()
        workload_ctx = self.mesh.tls.client_context()
        self.workload = _session(workload_ctx)
        anon = ssl.create_default_context(cafile=str(self.control.data_dir / "ca.pem"))
        anon.check_hostname = False
        self.anonymous = _session(anon)
        raw = self.admin.get(f"{self.control.url}/openapi.json", timeout=10)
        raw.raise_for_status()
        self.schema = schemathesis.openapi.from_dict(raw.json())

    def close(self) -> None:
        self.mesh.close()
        for session in (self.admin, self.workload, self.anonymous):
            session.close()
        self.control.stop()


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    p = Plane(tmp_path_factory.mktemp("fuzz-api"))
    yield p
    p.close()


def _no_5xx(response: Any, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"


def _fuzz_operation(plane: Plane, operation: Any, failures: list[str]) -> None:
    label = f"{operation.method.upper()} {operation.path}"

    @API_FUZZ
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        for session in (plane.admin, plane.workload):
            response = case.call(base_url=plane.control.url, session=session, timeout=10)
            if response.status_code >= 500:
                failures.append(f"{label}: {response.status_code} {response.text[:200]}")

    run()


def test_schemathesis_finds_no_5xx_in_the_admin_and_workload_apis(plane: Plane) -> None:
    """Every operation of /openapi.json, called with schema-generated requests as the admin
    and as a workload, answers below 500."""
    operations = [r.ok() for r in plane.schema.get_all_operations()]
    assert operations, "the control service's OpenAPI document lists no operation"
    failures: list[str] = []
    for operation in operations:
        if "/dashboard" in operation.path or operation.path.endswith("/watch"):
            continue  # HTML page and long-poll: not request decoding
        _fuzz_operation(plane, operation, failures)
    assert failures == []


BODY_TARGETS = [
    ("admin", "POST", "/v1/admin/resources"),
    ("admin", "POST", "/v1/admin/tokens"),
    ("anonymous", "POST", "/v1/sign"),
    ("workload", "POST", "/v1/sign"),
    ("workload", "PUT", "/v1/instances/fuzz-orders-1"),
    ("workload", "POST", "/v1/instances/fuzz-orders-1/report"),
]
bodies = (
    trees.map(lambda t: _dumps(t))
    | mutated([traffic()]).map(lambda d: _dumps(d))
    | st.binary(max_size=200)
    | st.sampled_from([b"\xff", b"", b"null", b"[]", b"1e400", b"---\n- a\n"])
)
HOSTILE_BODIES = [
    b"[" * 10_000 + b"]" * 10_000,  # deep JSON
    b"a: " + b"[" * 10_000 + b"]" * 10_000,  # deep YAML
    b'{"uses": 1' + b"0" * 5000 + b"}",  # an integer over int's 4300-digit limit
    b'{"uses": 1' + b"0" * 400 + b', "ttl": "1' + b"0" * 400 + b'h"}',
    b'{"csr": "' + b"A" * 100_000 + b'"}',
    b"apiVersion: meshlib.io/v1\nkind: RateLimit\nmetadata: {name: a}\n"
    b"spec: {service: a, requestsPerSecond: 1, burst: 1" + b"0" * 400 + b"}\n",
]


def _dumps(value: Any) -> bytes:
    try:
        return json.dumps(value).encode()
    except ValueError:  # 10**5000 has no decimal form; NaN is allowed by json.dumps
        return b'{"uses": ' + b"9" * 5000 + b"}"


@pytest.mark.parametrize(("who", "method", "path"), BODY_TARGETS)
def test_raw_bodies_never_give_5xx(plane: Plane, who: str, method: str, path: str) -> None:
    """Random JSON, YAML-ish trees, bytes and deep or huge-number bodies on the endpoints that
    read raw bodies answer below 500."""
    session: requests.Session = getattr(plane, who)
    failures: list[str] = []

    @API_FUZZ
    @given(body=bodies, ctype=st.sampled_from(["application/json", "application/yaml"]))
    def run(body: bytes, ctype: str) -> None:
        response = session.request(
            method,
            f"{plane.control.url}{path}",
            data=body,
            headers={"content-type": ctype},
            timeout=10,
        )
        if response.status_code >= 500:
            failures.append(f"{body[:80]!r}: {response.status_code} {response.text[:200]}")

    run()
    assert failures == [], f"{method} {path} as {who}"


@pytest.mark.parametrize(("who", "method", "path"), BODY_TARGETS)
def test_hostile_bodies_never_give_5xx(plane: Plane, who: str, method: str, path: str) -> None:
    """Deep JSON/YAML, 5000-digit and 10^400 numbers, 100 KB strings: each answered below 500."""
    session: requests.Session = getattr(plane, who)
    failures = []
    for body in HOSTILE_BODIES:
        for ctype in ("application/json", "application/yaml"):
            response = session.request(
                method,
                f"{plane.control.url}{path}",
                data=body,
                headers={"content-type": ctype},
                timeout=10,
            )
            if response.status_code >= 500:
                shown = f"{ctype} {body[:40]!r}"
                failures.append(f"{shown}: {response.status_code} {response.text[:200]}")
    assert failures == [], f"{method} {path} as {who}"
