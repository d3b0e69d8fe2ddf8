"""Control-plane benchmarks: propagation to many watchers, CSR signing, snapshot size.

``python -m benchmarks.control_plane [--quick]`` writes ``benchmarks/results/
control_plane.{json,md}``. Everything is real: ``meshctl control serve`` runs as a child
process on 127.0.0.1, the simulated instances are real workload-API clients (their own
SVIDs, registrations and long-poll watches over HTTPS), policy goes in through the admin
API that ``meshctl apply`` calls, and snapshots are decoded and compiled with the code the
library's agent uses.

Three parts:

* **propagation** — N simulated instances in this one process (asyncio), each with its
  own :class:`~meshlib.runtime.control_client.ControlClient` (so its own connections),
  registration, heartbeat and parked ``GET /v1/snapshot`` long-poll. Each round applies a
  TrafficPolicy that changes every watcher's snapshot and records, per watcher, the time
  from just before the apply call to (a) the new snapshot received and parsed and (b) it
  decoded and compiled into a ``PolicyEngine``;
* **CSR signing** — signatures per second through ``POST /v1/sign`` (join-token bootstrap
  and mTLS renewal), through ``ControlPlane.sign`` in process (CA + SQLite, no HTTP), and
  the bare CA (``CertificateAuthority.sign_csr``);
* **snapshot size** — bytes of the watch response body against mesh size, scoped and
  unscoped, from the pure builder and the encoder the API uses, with build, decode and
  compile times and the cost of one state change in the watch cache.

Every wait is bounded; every child process is stopped in ``finally``.

Modules: :mod:`.settings` (profile, constants), :mod:`.stats`, :mod:`.control` (the
control service child and workload identities), :mod:`.watchers` and
:mod:`.propagation`, :mod:`.signing`, :mod:`.registration`, :mod:`.snapshots`,
:mod:`.report` (Markdown, PNG) and :mod:`.cli` (the run and the command line).
"""

from __future__ import annotations

from benchmarks.control_plane.cli import main, run
from benchmarks.control_plane.settings import Profile

__all__ = ["Profile", "main", "run"]
