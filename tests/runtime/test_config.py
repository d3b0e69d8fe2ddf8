"""MeshConfig from arguments and MESH_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshlib.config import MeshConfig
from meshlib.errors import ConfigError


def test_from_env_reads_every_variable():
    """Each MESH_* variable lands in its field."""
    config = MeshConfig.from_env(
        {
            "MESH_SERVICE": "orders",
            "MESH_NAMESPACE": "shop",
            "MESH_CONTROL_URL": "https://127.0.0.1:7443",
            "MESH_TOKEN": "mesh1.x",
            "MESH_DATA_DIR": "/tmp/x",
            "MESH_LABELS": "version=v2,zone=b",
            "MESH_DEPENDENCIES": "inventory, payments.billing",
            "MESH_START_TIMEOUT": "7",
        }
    )
    assert config.service == "orders" and config.namespace == "shop"
    assert config.cache_dir == Path("/tmp/x")
    assert dict(config.labels) == {"version": "v2", "zone": "b"}
    assert config.dependencies == ("inventory", "payments.billing")
    assert config.start_timeout == 7.0


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({}, "MESH_SERVICE"),
        ({"MESH_SERVICE": "Orders!"}, "service"),
        ({"MESH_SERVICE": "a", "MESH_CONTROL_URL": "http://x"}, "control_url"),
        ({"MESH_SERVICE": "a", "MESH_LABELS": "novalue"}, "MESH_LABELS"),
        ({"MESH_SERVICE": "a", "MESH_START_TIMEOUT": "soon"}, "MESH_START_TIMEOUT"),
        ({"MESH_SERVICE": "a", "MESH_DEPENDENCIES": "Bad_Name"}, "dependencies"),
    ],
)
def test_bad_settings_name_the_field(env, field):
    """Invalid settings raise ConfigError naming the field or variable."""
    with pytest.raises(ConfigError, match=field):
        MeshConfig.from_env(env)


def test_public_api_names():
    """meshlib.__all__ lists the documented surface and every name resolves."""
    import meshlib

    for name in meshlib.__all__:
        assert getattr(meshlib, name) is not None
    assert {"Mesh", "MeshMiddleware", "serve", "MeshError"} <= set(meshlib.__all__)
