"""schemathesis against the control service's own OpenAPI document: every operation, called
as the admin and as a workload with schema-generated requests, answers below 500 with a
status code, content type and body that the document declares (bounded, derandomized)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from requests.adapters import HTTPAdapter
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

import meshlib
from tests.integration.harness import Control

pytestmark = pytest.mark.integration

EXAMPLES = settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


class _ContextAdapter(HTTPAdapter):
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


class Api:
    def __init__(self, root: Path) -> None:
        self.control = Control(root / "control")
        self.control.start()
        admin_dir = self.control.data_dir / "admin"
        ctx = ssl.create_default_context(cafile=str(admin_dir / "bundle.pem"))
        ctx.check_hostname = False
        ctx.load_cert_chain(admin_dir / "admin.pem", admin_dir / "admin.key")
        self.admin = _session(ctx)
        self.mesh = meshlib.Mesh(
            service="orders",
            control_url=self.control.url,
            token=self.control.token("orders"),
            data_dir=root / "orders",
            start_timeout=20,
        ).start()
        self.workload = _session(self.mesh.tls.client_context())
        raw = self.admin.get(f"{self.control.url}/openapi.json", timeout=10)
        raw.raise_for_status()
        self.schema = schemathesis.openapi.from_dict(raw.json())

    def close(self) -> None:
        self.mesh.close()
        self.admin.close()
        self.workload.close()
        self.control.stop()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    a = Api(tmp_path_factory.mktemp("api-schema"))
    yield a
    a.close()


def _check_operation(
    api: Api, operation: Any, callers: list[requests.Session], failures: list[str]
) -> int:
    """Check *operation*'s answers; the number of requests made."""
    label = f"{operation.method.upper()} {operation.path}"

    calls = 0

    @EXAMPLES
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        nonlocal calls
        for session in callers:
            calls += 1
            response = case.call(base_url=api.control.url, session=session, timeout=10)
            try:
                case.validate_response(response, checks=CHECKS)
            except Exception as exc:
                failures.append(f"{label}: {response.status_code} {str(exc)[:300]}")

    run()
    return calls


def test_every_answer_conforms_to_the_document(api: Api) -> None:
    operations = [r.ok() for r in api.schema.get_all_operations()]
    assert len(operations) >= 15, "the document lists every operation"
    failures: list[str] = []
    checked = calls = 0
    for operation in operations:
        if operation.path == "/dashboard":
            continue  # the HTML page: no JSON to conform
        # A workload's long-poll may wait a minute; as the admin it is refused at once.
        callers = [api.admin] if operation.path == "/v1/snapshot" else [api.admin, api.workload]
        calls += _check_operation(api, operation, callers, failures)
        checked += 1
    assert sorted(set(failures)) == []
    assert calls >= 2 * checked, "each operation was called with generated requests"
