"""The inbound side of the data plane, framework-free: one admission decision per request.

See :mod:`meshlib.inbound.admission`. Adapters: :mod:`meshlib.integrations.asgi` (HTTP) and
:mod:`meshlib.integrations.grpc_server` (sync and aio gRPC).
"""

from __future__ import annotations

from meshlib.inbound.admission import Admission, Decision
from meshlib.inbound.cache import AdmissionCache, AdmissionSource, admission_of
from meshlib.inbound.peer import PeerInfo
from meshlib.inbound.refusal import FLAG_HEADER, Refusal

__all__ = [
    "FLAG_HEADER",
    "Admission",
    "AdmissionCache",
    "AdmissionSource",
    "Decision",
    "PeerInfo",
    "Refusal",
    "admission_of",
]
