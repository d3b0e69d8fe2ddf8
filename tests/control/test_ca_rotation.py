"""Root rotation in the control plane: the stored bundle, replicas signing from their own
intermediates, add-root / retire-root with every refusal, tokens pinning the bundle."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from meshlib.errors import ConfigError
from meshlib.identity.keys import build_csr, generate_private_key
from meshlib.identity.spiffe import SpiffeId
from meshlib.identity.svid import certificate_fingerprint, load_pem_certificates
from meshlib_control.ca.bundle import BUNDLE_META_KEY
from meshlib_control.ca.offline import Written, init_root, issue_intermediate
from meshlib_control.ca.tokens import parse_token
from meshlib_control.errors import ApiError
from meshlib_control.plane import ControlPlane
from meshlib_control.settings import Settings

TD = "mesh.local"
PEM = serialization.Encoding.PEM
KEY = ("orders", "default", None)


class Roots:
    """Offline roots A, B, C and one intermediate of each, as `meshctl ca` writes them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root: dict[str, Written] = {}
        for name in "ABC":
            self.root[name] = init_root(tmp / f"root{name}", TD, name=f"root {name}")
            issue_intermediate(tmp / f"root{name}", tmp / f"int{name}", TD, name=f"r-{name}")

    def pem(self, name: str) -> str:
        return self.root[name].cert.public_bytes(PEM).decode()

    def fingerprint(self, name: str) -> str:
        return certificate_fingerprint(self.root[name].cert)

    def plane(self, name: str, data: str = "control") -> ControlPlane:
        """A replica signing from root *name*'s intermediate, on the shared store."""
        inter = self.tmp / f"int{name}"
        return ControlPlane(
            Settings(
                data_dir=self.tmp / data,
                store=f"sqlite:///{self.tmp / 'mesh.db'}",
                ca_cert=inter / "ca.pem",
                ca_key=inter / "ca.key",
            )
        )


@pytest.fixture
def roots(tmp_path: Path) -> Roots:
    return Roots(tmp_path)


def _roots_of(plane: ControlPlane) -> list[str]:
    return [r["fingerprint"] for r in plane.ca_status()["roots"]]


def _snapshot_roots(plane: ControlPlane) -> list[str]:
    pem = plane.cache.get(KEY).trust_bundle.encode()
    return [certificate_fingerprint(c) for c in load_pem_certificates(pem)]


def test_first_replica_stores_its_root_and_signs_through_its_intermediate(roots: Roots) -> None:
    """The bundle starts as the signing root; SVIDs carry leaf + intermediate; the
    snapshot and /v1/bundle carry the bundle; a token pins it."""
    plane = roots.plane("A")
    assert _roots_of(plane) == [roots.fingerprint("A")]
    assert plane.store.get_meta(BUNDLE_META_KEY) == roots.pem("A")
    assert _snapshot_roots(plane) == [roots.fingerprint("A")]
    status = plane.ca_status()
    assert status["signingRoot"] == roots.fingerprint("A")
    assert status["intermediates"][0]["subject"] == "CN=meshlib intermediate r-A"
    spiffe_id = SpiffeId.for_service(TD, "default", "orders")
    token = plane.create_token({"service": "orders"})["token"]
    assert parse_token(token).ca_fingerprints == (roots.fingerprint("A"),)
    answer = plane.sign(
        {"csr": build_csr(generate_private_key(), spiffe_id).decode(), "token": token}, None
    )
    assert len(load_pem_certificates(answer["certificate"].encode())) == 2
    assert answer["bundle"] == roots.pem("A")
    assert plane.bundle()["fingerprints"] == [roots.fingerprint("A")]


def test_add_root_reaches_snapshots_tokens_and_other_replicas(roots: Roots) -> None:
    """After add-root B, snapshots (new version), /v1/bundle and tokens carry A and B; a
    replica signing from B may now start, and sees the same bundle."""
    plane = roots.plane("A")
    before = plane.cache.get(KEY).version
    status = plane.add_root({"cert": roots.pem("B")})
    both = [roots.fingerprint("A"), roots.fingerprint("B")]
    assert [r["fingerprint"] for r in status["roots"]] == both
    assert [r["signing"] for r in status["roots"]] == [True, False]
    assert plane.cache.get(KEY).version != before
    assert _snapshot_roots(plane) == both
    token = plane.create_token({"service": "orders"})["token"]
    assert list(parse_token(token).ca_fingerprints) == both
    replica_b = roots.plane("B", data="control-b")
    assert replica_b.ca_status()["signingRoot"] == roots.fingerprint("B")
    assert _roots_of(replica_b) == both
    assert _snapshot_roots(replica_b) == both


def test_a_replica_whose_root_is_not_in_the_bundle_refuses_to_start(roots: Roots) -> None:
    """Signing from C before `add-root C` would hand out SVIDs nobody trusts: refused."""
    roots.plane("A")
    with pytest.raises(ConfigError, match=r"lacks 'root C'.*meshctl ca add-root"):
        roots.plane("C", data="control-c")


@pytest.mark.parametrize(
    ("body", "status", "path", "reason"),
    [
        ({}, 400, "cert", "cert: required"),
        ({"cert": 5}, 400, "cert", "cert: required"),
        ({"cert": "not pem"}, 400, "cert", "cert: not a PEM certificate"),
        ("two", 400, "cert", "exactly one certificate, got 2"),
        ("intermediate", 400, "cert", "not a self-signed root"),
        ("A", 400, "cert", "already in the trust bundle"),
    ],
)
def test_add_root_refusals_change_nothing(
    roots: Roots, body: object, status: int, path: str, reason: str
) -> None:
    """Each bad add-root is refused naming the field; the stored bundle is untouched."""
    plane = roots.plane("A")
    if body == "two":
        body = {"cert": roots.pem("B") + roots.pem("C")}
    elif body == "intermediate":
        body = {"cert": (roots.tmp / "intB" / "ca.pem").read_text().split("-----END")[0]}
        body["cert"] += "-----END CERTIFICATE-----\n"
    elif body == "A":
        body = {"cert": roots.pem("A")}
    stored = plane.store.get_meta(BUNDLE_META_KEY)
    version = plane.cache.get(KEY).version
    with pytest.raises(ApiError) as info:
        plane.add_root(body)  # type: ignore[arg-type]
    assert (info.value.status, info.value.path) == (status, path)
    assert reason in info.value.message
    assert plane.store.get_meta(BUNDLE_META_KEY) == stored
    assert plane.cache.get(KEY).version == version


def test_retire_root_refusals_and_the_full_rotation(roots: Roots, caplog) -> None:
    """A replica refuses to retire its own signing root (409) or an unknown one (404);
    the replica signing from B retires A; the A replica keeps its last good bundle (it
    cannot serve one without its own root) and says why."""
    plane_a = roots.plane("A")
    plane_a.add_root({"cert": roots.pem("B")})
    with pytest.raises(ApiError) as info:
        plane_a.retire_root({"fingerprint": roots.fingerprint("A")})
    assert info.value.status == 409 and info.value.path == "fingerprint"
    assert "signs from" in info.value.message
    with pytest.raises(ApiError) as info:
        plane_a.retire_root({"fingerprint": roots.fingerprint("C")})
    assert info.value.status == 404 and roots.fingerprint("C") in info.value.message
    with pytest.raises(ApiError) as info:
        plane_a.retire_root({"fingerprint": ""})
    assert info.value.status == 400
    assert len(_roots_of(plane_a)) == 2

    plane_b = roots.plane("B", data="control-b")
    status = plane_b.retire_root({"fingerprint": roots.fingerprint("A")})
    assert [r["fingerprint"] for r in status["roots"]] == [roots.fingerprint("B")]
    assert _snapshot_roots(plane_b) == [roots.fingerprint("B")]
    with pytest.raises(ApiError) as info:
        plane_b.retire_root({"fingerprint": roots.fingerprint("B")})
    assert info.value.status == 409

    with caplog.at_level(logging.ERROR, logger="meshlib_control"):
        plane_a.refresh()
    assert "not adopting the stored trust bundle" in caplog.text
    assert _roots_of(plane_a) == [roots.fingerprint("A"), roots.fingerprint("B")]
