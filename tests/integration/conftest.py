"""Fixtures that start real processes on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import meshlib
from tests.integration.harness import Control, Service


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Control]:
    """A running control service with its own data dir."""
    plane = Control(tmp_path / "control", "--instance-ttl", "5s")
    plane.start()
    yield plane
    plane.stop()


@pytest.fixture
def services(tmp_path: Path, control: Control) -> Iterator[Callable[..., Service]]:
    """Start meshed echo services; all are stopped at the end of the test."""
    started: list[Service] = []

    def start(name: str, **kwargs: object) -> Service:
        service = Service(control, name, tmp_path, **kwargs)  # type: ignore[arg-type]
        started.append(service)
        return service.start()

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def workload(tmp_path: Path, control: Control) -> Iterator[Callable[..., meshlib.Mesh]]:
    """Start in-process meshed workloads (clients); closed at the end of the test."""
    meshes: list[meshlib.Mesh] = []

    def make(name: str, **kwargs: object) -> meshlib.Mesh:
        mesh = meshlib.Mesh(
            service=name,
            control_url=control.url,
            token=control.token(name),
            data_dir=tmp_path / f"client-{name}-{len(meshes)}",
            start_timeout=20,
            **kwargs,  # type: ignore[arg-type]
        )
        meshes.append(mesh)
        return mesh.start()

    yield make
    for mesh in meshes:
        mesh.close()
