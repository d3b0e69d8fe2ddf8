"""Suite-wide rules.

Under CI (``CI=true``) a test skipped because a system dependency is missing — the Envoy
binary, etcd, Chromium or Prometheus — fails instead: CI installs them (``make
system-deps`` and the ``[sidecar]`` extra), so a skip there would hide a broken install
step. On a developer's machine the skip stays, with its reason.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

REQUIRED_UNDER_CI = ("envoy", "etcd", "chromium", "prometheus")


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and _under_ci()):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    missing = [tool for tool in REQUIRED_UNDER_CI if tool in reason.lower()]
    if missing:
        report.outcome = "failed"
        report.longrepr = (
            f"under CI=true a missing {missing[0]} is a failure, not a skip "
            f"(make system-deps installs it): {reason}"
        )
