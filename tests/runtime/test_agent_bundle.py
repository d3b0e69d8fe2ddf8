"""The agent adopts the trust bundle a snapshot carries (root rotation), or rejects it whole."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from meshlib.config import MeshConfig
from meshlib.errors import IdentityError, PolicyError
from meshlib.identity.keys import build_csr, generate_private_key, private_key_pem
from meshlib.identity.spiffe import SpiffeId
from meshlib.identity.svid import SVID
from meshlib.policy.engine import PolicyEngine
from meshlib.policy.snapshot import InboundPolicy, Snapshot, encode_snapshot
from meshlib.runtime.agent import Agent
from meshlib_control.ca.authority import CertificateAuthority
from meshlib_control.ca.roots import make_root

TD = "mesh.local"
ORDERS = SpiffeId.for_service(TD, "default", "orders")
PEM = serialization.Encoding.PEM


def _svid(tmp_path: Path) -> tuple[SVID, CertificateAuthority]:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", TD)
    key = generate_private_key()
    issued = ca.sign_csr(build_csr(key, ORDERS), entitled=ORDERS, ttl=timedelta(hours=1))
    return SVID.from_pem(issued.cert_pem, private_key_pem(key), ca.bundle_pem), ca


def _body(version: str, bundle: str) -> dict[str, object]:
    snapshot = Snapshot(version, TD, "orders", "default", InboundPolicy(), (), trust_bundle=bundle)
    return encode_snapshot(snapshot)


def _agent(tmp_path: Path, mode: str = "library") -> tuple[Agent, list[SVID], list[PolicyEngine]]:
    identities: list[SVID] = []
    engines: list[PolicyEngine] = []
    agent = Agent(
        MeshConfig(service="orders", data_dir=tmp_path / "wl"),
        on_identity=identities.append,
        on_engine=engines.append,
        mode=mode,
    )
    return agent, identities, engines


def test_a_new_bundle_is_adopted_without_a_new_svid(tmp_path: Path) -> None:
    """Root B in the snapshot: the same certificate now trusts A+B, saved to the cache,
    and the renewal schedule is untouched; the same bundle again changes nothing."""
    svid, ca = _svid(tmp_path)
    agent, identities, engines = _agent(tmp_path)
    agent._install_svid(svid, save=True)
    received = agent._svid_received_at
    both = ca.bundle_pem + make_root(TD, name="B")[0].public_bytes(PEM)
    assert agent._install_snapshot_dict(_body("v1", both.decode())) == "v1"
    assert agent.svid is not None and agent.svid.bundle_pem == both
    assert agent.svid.serial == svid.serial
    assert identities[-1].bundle_pem == both and len(identities) == 2
    assert agent._svid_received_at == received
    cached = agent.cache.load_svid()
    assert cached is not None and cached.bundle_pem == both
    agent._install_snapshot_dict(_body("v2", both.decode()))
    assert len(identities) == 2  # unchanged bundle: no republish
    assert [e.version for e in engines] == ["v1", "v2"]


def test_a_bundle_with_a_non_ca_certificate_rejects_the_whole_snapshot(tmp_path: Path) -> None:
    """A leaf where roots belong: PolicyError at trustBundle, nothing installed."""
    svid, _ = _svid(tmp_path)
    agent, identities, engines = _agent(tmp_path)
    agent._install_svid(svid, save=False)
    leaf_only = svid.cert_chain_pem.decode()
    with pytest.raises(PolicyError) as info:
        agent._install_snapshot_dict(_body("v1", leaf_only))
    assert info.value.path == "trustBundle"
    assert "not a CA certificate" in info.value.reason
    assert agent.svid is svid and len(identities) == 1 and engines == []


def test_a_sidecar_agent_takes_only_the_bundle(tmp_path: Path) -> None:
    """In sidecar mode the snapshot's bundle reaches on_identity (the SDS bundle file);
    no engine is compiled (Envoy gets its policy over xDS)."""
    svid, ca = _svid(tmp_path)
    agent, identities, engines = _agent(tmp_path, mode="sidecar")
    agent._install_svid(svid, save=False)
    both = ca.bundle_pem + make_root(TD, name="B")[0].public_bytes(PEM)
    assert agent._install_snapshot_dict(_body("v1", both.decode())) == "v1"
    assert identities[-1].bundle_pem == both
    assert engines == [] and agent.engine is None


def test_with_bundle_refuses_what_is_not_pem_roots(tmp_path: Path) -> None:
    """SVID.with_bundle names the bundle in its refusals."""
    svid, ca = _svid(tmp_path)
    with pytest.raises(IdentityError, match="trust bundle: "):
        svid.with_bundle(b"garbage")
    with pytest.raises(IdentityError, match="certificate 1 is not a CA"):
        svid.with_bundle(ca.bundle_pem + svid.cert_chain_pem)
    assert svid.with_bundle(ca.bundle_pem).bundle_pem == ca.bundle_pem
