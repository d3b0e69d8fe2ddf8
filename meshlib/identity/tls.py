"""Live SSLContexts built from the current SVID, swapped without a restart.

Servers receive one *front* context whose ``sni_callback`` moves every new handshake onto
the context of the current SVID (the callback runs for every handshake, SNI or not), so a
rotated certificate or trust bundle takes effect for new connections while open ones
carry on. Clients ask :meth:`TLSContexts.client_context` at connect time, so they always
dial with the current certificate. Publishing a new SVID is one reference swap.

TLS proves a peer's chain; :attr:`TLSContexts.peer_validator` adds the X.509-SVID leaf rules
(one URI SAN with a workload path, this mesh's trust domain, not a CA) that OpenSSL does
not check. Every server and client of ours runs it once per connection.
"""

from __future__ import annotations

import ssl
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path

from meshlib.identity.keys import write_private_file
from meshlib.identity.svid import SVID, PeerSVIDValidator

__all__ = ["TLSContexts", "build_client_context", "build_server_context"]

ALPN_HTTP1 = ["http/1.1"]


def _load_chain(ctx: ssl.SSLContext, svid: SVID, files_dir: Path) -> None:
    # ssl only loads a key from a file: write it 0600 into the workload's own directory
    # for the duration of the load, then remove it (the persistent copy, if any, is the
    # agent's business).
    with tempfile.TemporaryDirectory(dir=files_dir, prefix=".tls-") as tmp:
        cert = Path(tmp) / "chain.pem"
        key = Path(tmp) / "key.pem"
        write_private_file(cert, svid.cert_chain_pem)
        write_private_file(key, svid.key_pem)
        ctx.load_cert_chain(cert, key)


def build_server_context(
    svid: SVID, files_dir: Path, *, verify_mode: ssl.VerifyMode = ssl.CERT_REQUIRED
) -> ssl.SSLContext:
    """A TLS server context presenting *svid* and verifying clients against its bundle."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = verify_mode
    ctx.load_verify_locations(cadata=svid.bundle_pem.decode())
    _load_chain(ctx, svid, files_dir)
    ctx.set_alpn_protocols(ALPN_HTTP1)
    return ctx


def build_client_context(svid: SVID | None, bundle_pem: bytes, files_dir: Path) -> ssl.SSLContext:
    """A TLS client context trusting *bundle_pem*, presenting *svid* when given.

    Host-name checks are off on purpose: peers are identified by their SPIFFE ID, which
    the caller checks after the handshake (``meshlib.identity.svid``).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=bundle_pem.decode())
    if svid is not None:
        _load_chain(ctx, svid, files_dir)
    ctx.set_alpn_protocols(ALPN_HTTP1)
    return ctx


class TLSContexts:
    """The contexts of one workload identity, rebuilt on every :meth:`update`.

    Args:
        svid: the first SVID.
        files_dir: a private (0700) directory where key material may be staged.
        federated_trust_domains: trust domains besides the SVID's own whose IDs peers may
            carry (none today: federation is not configured anywhere yet).
    """

    def __init__(
        self,
        svid: SVID,
        *,
        files_dir: Path,
        federated_trust_domains: Collection[str] = (),
    ) -> None:
        self._files_dir = files_dir
        self._federated = frozenset(federated_trust_domains)
        self._listeners: list[Callable[[SVID], None]] = []
        self._validator: PeerSVIDValidator | None = None
        self._install(svid)

    @property
    def peer_validator(self) -> PeerSVIDValidator:
        """Validates peers' leaves for this workload's trust domain (and federated ones)."""
        validator = self._validator
        assert validator is not None  # set by _install
        return validator

    def _install(self, svid: SVID) -> None:
        trusted = self._federated | {svid.spiffe_id.trust_domain}
        if self._validator is None or self._validator.trust_domains != trusted:
            # Kept across rotations (verdicts depend only on the leaf and the trust
            # domains), rebuilt only if the trust domain itself changes.
            self._validator = PeerSVIDValidator(trusted)
        server = build_server_context(svid, self._files_dir)
        optional = build_server_context(svid, self._files_dir, verify_mode=ssl.CERT_OPTIONAL)
        client = build_client_context(svid, svid.bundle_pem, self._files_dir)
        # One tuple assignment publishes all three together.
        self._current = (svid, server, optional, client)

    @property
    def svid(self) -> SVID:
        """The SVID in use for new handshakes."""
        return self._current[0]

    def update(self, svid: SVID) -> None:
        """Make *svid* (and its bundle) the one used by every new handshake."""
        self._install(svid)
        for listener in self._listeners:
            listener(svid)

    def on_update(self, listener: Callable[[SVID], None]) -> None:
        """Call *listener* after each rotation (for example to rebuild gRPC credentials)."""
        self._listeners.append(listener)

    def client_context(self) -> ssl.SSLContext:
        """The client context of the current SVID; read it at connect time."""
        return self._current[3]

    def server_context(self, *, require_client_cert: bool = True) -> ssl.SSLContext:
        """A front context for a listening socket that follows every rotation."""
        index = 1 if require_client_cert else 2
        front = build_server_context(
            self.svid,
            self._files_dir,
            verify_mode=ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL,
        )

        def switch(sslobj: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: object) -> None:
            sslobj.context = self._current[index]  # type: ignore[assignment]

        front.sni_callback = switch
        return front
