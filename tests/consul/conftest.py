"""Fixtures for the Consul tests: the api-double package and a FAKE Consul built from it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.consul.fake_consul import FakeConsul, api_double_dir, under_ci


@pytest.fixture(scope="session")
def api_double() -> Path:
    """The unpacked @hashicorp/consul-api-double (npm); a failed fetch fails under CI."""
    try:
        return api_double_dir()
    except (RuntimeError, OSError) as exc:
        if under_ci():
            pytest.fail(f"under CI=true a missing consul-api-double is a failure: {exc}")
        pytest.skip(str(exc))


@pytest.fixture
def fake_consul(api_double: Path) -> Iterator[FakeConsul]:
    """A fake Consul agent whose ACLs accept only the token ``s3cret``."""
    with FakeConsul(api_double, token="s3cret") as fake:
        yield fake
