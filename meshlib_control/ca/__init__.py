"""The mesh CA: signs CSRs into X.509-SVIDs, and the join tokens that authorize a first one."""

from __future__ import annotations

from meshlib_control.ca.authority import (
    CertificateAuthority,
    CSRRejected,
    IssuedCertificate,
)
from meshlib_control.ca.tokens import (
    ParsedToken,
    TokenError,
    TokenRecord,
    check_token,
    new_token,
    parse_token,
    parse_ttl,
)

__all__ = [
    "CSRRejected",
    "CertificateAuthority",
    "IssuedCertificate",
    "ParsedToken",
    "TokenError",
    "TokenRecord",
    "check_token",
    "new_token",
    "parse_token",
    "parse_ttl",
]
