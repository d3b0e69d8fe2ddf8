"""The agent keeps the last good snapshot when a new one does not decode."""

from __future__ import annotations

import pytest

from meshlib.config import MeshConfig
from meshlib.errors import ConfigError, PolicyError
from meshlib.policy.snapshot import InboundPolicy, Snapshot, encode_snapshot
from meshlib.runtime.agent import Agent, parse_token_fingerprint


def _agent(tmp_path):
    installed = []
    agent = Agent(
        MeshConfig(service="orders", data_dir=tmp_path),
        on_identity=lambda svid: None,
        on_engine=installed.append,
    )
    return agent, installed


def test_invalid_snapshot_is_rejected_whole(tmp_path):
    """A snapshot that fails to decode raises PolicyError and changes nothing."""
    agent, installed = _agent(tmp_path)
    good = encode_snapshot(Snapshot("v1", "mesh.local", "orders", "default", InboundPolicy(), ()))
    assert agent._install_snapshot_dict(good) == "v1"
    bad = dict(good, version="v2", inbound={"peerMode": "SOMETIMES"})
    with pytest.raises(PolicyError):
        agent._install_snapshot_dict(bad)
    assert [e.version for e in installed] == ["v1"]
    assert agent.engine is not None and agent.engine.version == "v1"
    assert agent.cache.load_snapshot().version == "v1"


def test_token_fingerprint_parsing():
    """The CA fingerprint is read from a join token; other strings are refused."""
    assert parse_token_fingerprint("mesh1.a.b." + "f" * 64) == "sha256:" + "f" * 64
    with pytest.raises(ConfigError, match="MESH_TOKEN"):
        parse_token_fingerprint("not-a-token")
