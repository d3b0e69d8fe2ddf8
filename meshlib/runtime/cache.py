"""The workload's on-disk last-known-good state: SVID and snapshot, 0600 in a 0700 dir."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meshlib.errors import IdentityError, PolicyError
from meshlib.identity.keys import write_private_file
from meshlib.identity.svid import SVID
from meshlib.policy.snapshot import Snapshot, decode_snapshot, encode_snapshot
from meshlib.runtime.renewal import RebootstrapCredential

__all__ = ["WorkloadCache"]

log = logging.getLogger("meshlib.cache")

REBOOTSTRAP_FILE = "rebootstrap.json"


class WorkloadCache:
    """The files of one workload.

    ``svid.pem``, ``svid.key``, ``bundle.pem``, ``rebootstrap.json`` and ``snapshot.json``.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)

    def save_svid(self, svid: SVID) -> None:
        """Persist *svid*; the key is written 0600 and never leaves this directory."""
        write_private_file(self.directory / "svid.key", svid.key_pem)
        write_private_file(self.directory / "svid.pem", svid.cert_chain_pem)
        write_private_file(self.directory / "bundle.pem", svid.bundle_pem)

    def load_svid(self, *, allow_expired: bool = False) -> SVID | None:
        """The cached SVID if present, consistent and (unless *allow_expired*) not expired."""
        try:
            svid = SVID.from_pem(
                (self.directory / "svid.pem").read_bytes(),
                (self.directory / "svid.key").read_bytes(),
                (self.directory / "bundle.pem").read_bytes(),
            )
        except FileNotFoundError:
            return None
        except IdentityError as exc:
            log.warning("ignoring cached SVID: %s", exc)
            return None
        if not allow_expired and svid.not_after <= datetime.now(UTC):
            log.warning("ignoring cached SVID: expired at %s", svid.not_after.isoformat())
            return None
        return svid

    def save_rebootstrap(self, credential: RebootstrapCredential) -> None:
        """Keep the re-bootstrap credential (a secret, like the key: 0600, never logged)."""
        data = json.dumps(credential.to_json()).encode()
        write_private_file(self.directory / REBOOTSTRAP_FILE, data)

    def load_rebootstrap(self) -> RebootstrapCredential | None:
        """The stored re-bootstrap credential, or None if absent or unreadable."""
        try:
            raw: Any = json.loads((self.directory / REBOOTSTRAP_FILE).read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            log.warning("ignoring the stored re-bootstrap credential: %s", exc)
            return None
        return RebootstrapCredential.from_json(raw)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Persist the snapshot that was just applied."""
        data = json.dumps(encode_snapshot(snapshot), separators=(",", ":")).encode()
        write_private_file(self.directory / "snapshot.json", data)

    def load_snapshot(self) -> Snapshot | None:
        """The last applied snapshot, or None if absent or unreadable."""
        path = self.directory / "snapshot.json"
        try:
            raw: Any = json.loads(path.read_bytes())
            return decode_snapshot(raw)
        except FileNotFoundError:
            return None
        except (ValueError, PolicyError) as exc:
            log.warning("ignoring cached snapshot: %s", exc)
            return None
