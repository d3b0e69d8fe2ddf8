"""The identity-checked httpx transports, under their historical name.

They live in :mod:`meshlib.transport.checked` so that the agent (``meshlib.runtime``) can use
them without importing an integration; this module keeps the public import path.
"""

from __future__ import annotations

from meshlib.transport.checked import (
    AsyncIdentityTransport,
    IdentityTransport,
    check_peer,
    expected_validator,
)

__all__ = ["AsyncIdentityTransport", "IdentityTransport", "check_peer", "expected_validator"]
