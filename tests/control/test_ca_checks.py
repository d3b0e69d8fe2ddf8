"""`meshctl check`'s trust lines: intermediate expiry, and who applied the trust bundle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from meshlib.identity.spiffe import SpiffeId
from meshlib.identity.svid import load_pem_certificates
from meshlib_control.ca.authority import CertificateAuthority
from meshlib_control.ca.bundle import describe
from meshlib_control.ca.offline import init_root, issue_intermediate
from meshlib_control.observe.trust_checks import bundle_check, signing_checks, svid_roots_check

TD = "mesh.local"
NOW = datetime.now(UTC)


def test_intermediate_expiry_is_ok_then_warned_then_failed(tmp_path: Path) -> None:
    """30 days before an intermediate expires `check` warns, naming the fix; after, it fails."""
    init_root(tmp_path / "root", TD)
    issue_intermediate(
        tmp_path / "root", tmp_path / "r1", TD, name="r1", validity=timedelta(days=40)
    )
    inter = load_pem_certificates((tmp_path / "r1" / "ca.pem").read_bytes())[0]
    name = "CA intermediate CN=meshlib intermediate r1"
    [ok] = signing_checks([inter], NOW)
    assert (ok["name"], ok["status"]) == (name, "ok")
    [warn] = signing_checks([inter], NOW + timedelta(days=20))
    assert warn["status"] == "warn" and "meshctl ca intermediate" in warn["message"]
    [fail] = signing_checks([inter], NOW + timedelta(days=41))
    assert fail["status"] == "fail" and "expired on" in fail["message"]
    assert signing_checks([], NOW) == []  # a root signing directly: roots are checked apart


def test_bundle_check_names_the_instances_behind() -> None:
    """Exactly the control's roots (any order) counts as applied; others are named; pages
    without the field, or unreadable, are counted apart."""
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    answers = [
        ("default/lib/1", {"bundleFingerprints": [b, a]}),
        ("default/side/2", {"bundleFingerprints": [a]}),
        ("default/old/3", {"spiffeId": "x"}),
        ("default/down/4", "connection refused"),
    ]
    check = bundle_check([a, b], answers)
    assert check["name"] == "trust bundle" and check["status"] == "warn"
    assert check["message"] == (
        "2 root(s); 1 instance(s) trust exactly this bundle; not yet applied by: "
        "default/side/2; 2 unknown (no bundle on the admin page or unreachable)"
    )
    done = bundle_check([a, b], answers[:1])
    assert done == {
        "name": "trust bundle",
        "status": "ok",
        "message": "2 root(s); 1 instance(s) trust exactly this bundle",
    }


def _chain(tmp_path: Path, root: str) -> str:
    """The certificateChain an instance's admin page shows for an SVID under *root*."""
    out = tmp_path / f"int-{root}"
    if not out.exists():
        issue_intermediate(tmp_path / root, out, TD, name=root)
    ca = CertificateAuthority.from_files(out / "ca.pem", out / "ca.key", TD)
    issued, _ = ca.issue_local(SpiffeId.for_service(TD, "default", "x"), timedelta(hours=1))
    return issued.cert_pem.decode()


def test_svid_roots_check_follows_the_age_out(tmp_path: Path) -> None:
    """After switching signing to B, instances still under A are named (warn); all under
    B is ok; an SVID under no root of the bundle fails (its peers refuse it)."""
    a = init_root(tmp_path / "A", TD, name="A").cert
    b = init_root(tmp_path / "B", TD, name="B").cert
    init_root(tmp_path / "C", TD, name="C")
    old, new = _chain(tmp_path, "A"), _chain(tmp_path, "B")
    mixed = [("ns/lib/1", {"certificateChain": old}), ("ns/side/2", {"certificateChain": new})]
    check = svid_roots_check([a, b], b, [*mixed, ("ns/down/3", "unreachable")])
    assert check["status"] == "warn"
    assert check["message"] == (
        f"1 under {describe(a)}; 1 under {describe(b)}; not yet under the signing root: ns/lib/1"
    )
    done = svid_roots_check([b], b, [("ns/side/2", {"certificateChain": new})])
    assert (done["status"], done["message"]) == ("ok", f"1 under {describe(b)}")
    orphan = svid_roots_check([b], b, [("ns/x/4", {"certificateChain": _chain(tmp_path, "C")})])
    assert orphan["status"] == "fail"
    assert "under no root of the bundle (refused by peers): ns/x/4" in orphan["message"]
