"""gRPC outcomes read as the policy's HTTP outcomes, and the errors the mesh raises (pure).

The mapping decides what ``retryOn``, ``retriableStatusCodes``, breakers and outlier
detection make of a gRPC call; no server is needed to check it.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from meshlib.errors import RetryBudgetExhausted
from meshlib.integrations.grpc_client_call import call_kwargs
from meshlib.integrations.grpc_client_outcomes import BudgetExhaustedRpcError, outcome_of
from meshlib.policy.model import RetryPolicy
from meshlib.resilience.retry import is_failure, is_retryable


class _Error(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str = "", trailing: Any = ()) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailing


@pytest.mark.parametrize(
    ("code", "details", "kind", "status"),
    [
        (
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect to all addresses",
            "connect-failure",
            None,
        ),
        (grpc.StatusCode.UNAVAILABLE, "Socket closed", "reset", None),
        (grpc.StatusCode.UNAVAILABLE, "down on purpose", "status", 503),
        (grpc.StatusCode.INTERNAL, "", "status", 500),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "", "status", 429),
        (grpc.StatusCode.UNIMPLEMENTED, "", "status", 501),
        (grpc.StatusCode.NOT_FOUND, "", "status", 404),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "", "status", 504),
    ],
)
def test_outcomes_follow_the_table(
    code: grpc.StatusCode, details: str, kind: str, status: int | None
) -> None:
    outcome = outcome_of(_Error(code, details))
    assert (outcome.kind, outcome.status) == (kind, status)


def test_per_try_deadline_is_a_timeout() -> None:
    outcome = outcome_of(_Error(grpc.StatusCode.DEADLINE_EXCEEDED), per_try_expired=True)
    assert outcome.kind == "timeout" and is_failure(outcome)


def test_retriable_status_codes_match_the_mapped_status() -> None:
    """``retriableStatusCodes: [429]`` retries RESOURCE_EXHAUSTED, and only what maps to 429."""
    policy = RetryPolicy(retry_on=("retriable-status-codes",), retriable_status_codes=(429,))
    assert is_retryable(policy, outcome_of(_Error(grpc.StatusCode.RESOURCE_EXHAUSTED)))
    assert not is_retryable(policy, outcome_of(_Error(grpc.StatusCode.UNAVAILABLE, "x")))
    assert not is_failure(outcome_of(_Error(grpc.StatusCode.RESOURCE_EXHAUSTED)))


def test_budget_exhausted_error_keeps_the_last_answer() -> None:
    last = _Error(grpc.StatusCode.UNAVAILABLE, "flaky", (("retry-after-ms", "5"),))
    error = BudgetExhaustedRpcError(last, RetryBudgetExhausted("spent", service="s.default"))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "flaky"
    assert error.trailing_metadata() == (
        ("retry-after-ms", "5"),
        ("x-mesh-flag", "RETRY_BUDGET_EXHAUSTED"),
    )
    assert error.last is last


def test_call_options_are_grpcs_own() -> None:
    assert call_kwargs({"wait_for_ready": True, "compression": None}) == {"wait_for_ready": True}
    with pytest.raises(TypeError, match=r"unexpected keyword argument.*: retries"):
        call_kwargs({"retries": 3})
