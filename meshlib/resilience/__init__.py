"""PURE resilience building blocks: retry decisions and budget, breakers, outlier detection,
local rate limiting, fault injection and deadlines.

Nothing here does I/O or imports a framework; the httpx transport, the ASGI middleware and
the gRPC integration wire these in (see docs/resilience.md and the policy reference).
"""

from __future__ import annotations

from meshlib.resilience.breaker import BreakerRegistry, BreakerState
from meshlib.resilience.budget import RetryBudget
from meshlib.resilience.deadline import (
    DEADLINE_HEADER,
    current_deadline,
    deadline_scope,
    effective_deadline,
    format_deadline_header,
    parse_deadline_header,
    remaining,
)
from meshlib.resilience.fault import NO_FAULT, FaultDecision, decide_fault
from meshlib.resilience.outlier import OutlierDetector
from meshlib.resilience.ratelimit import RateLimiter, TokenBucket, retry_after_header
from meshlib.resilience.retry import (
    CONNECT_FAILURE,
    IDEMPOTENT_METHODS,
    RESET,
    TIMEOUT,
    Outcome,
    attempt_deadline,
    backoff_wait,
    build_retrying,
    is_failure,
    is_retry_safe,
    is_retryable,
)

__all__ = [
    "CONNECT_FAILURE",
    "DEADLINE_HEADER",
    "IDEMPOTENT_METHODS",
    "NO_FAULT",
    "RESET",
    "TIMEOUT",
    "BreakerRegistry",
    "BreakerState",
    "FaultDecision",
    "Outcome",
    "OutlierDetector",
    "RateLimiter",
    "RetryBudget",
    "TokenBucket",
    "attempt_deadline",
    "backoff_wait",
    "build_retrying",
    "current_deadline",
    "deadline_scope",
    "decide_fault",
    "effective_deadline",
    "format_deadline_header",
    "is_failure",
    "is_retry_safe",
    "is_retryable",
    "parse_deadline_header",
    "remaining",
    "retry_after_header",
]
