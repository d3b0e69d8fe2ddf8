"""schemathesis against the control service's own OpenAPI document: every operation, called
as the admin and as a workload with schema-generated requests, answers below 500 with a
status code, content type and body that the document declares (bounded, derandomized)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fuzz.test_fuzz_control_api import Plane

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


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    """A control service process, an admin and a workload session, and its document."""
    p = Plane(tmp_path_factory.mktemp("api-schema"))
    yield p
    p.close()


def _check_operation(
    api: Plane, operation: Any, callers: list[requests.Session], failures: list[str]
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


def test_every_answer_conforms_to_the_document(api: Plane) -> None:
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
