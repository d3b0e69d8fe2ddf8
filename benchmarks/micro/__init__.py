"""Micro-benchmark: where library mode spends its time on one outbound request.

``python -m benchmarks.micro [--quick]`` writes ``benchmarks/results/micro.{json,md}``.

Four parts, all with meshlib's real objects:

* **imports** — what ``import meshlib`` and an unstarted ``meshlib.Mesh(...)`` load into a
  fresh interpreter (gRPC, YAML, control-service code, SDKs…) and the RSS they add, beside
  ``import httpx`` alone;
* **layers** — each per-request step of the mesh transport timed on its own, in process,
  with ``time.perf_counter_ns`` over many iterations, repeated: name resolution, route
  matching, the call's bookkeeping, balancer pick, breaker admission and recording,
  admission and budget, building the attempt (headers, deadline, trace context), the
  tenacity retry wrapper, telemetry (span + metrics);
* **TLS** — on real loopback sockets against a server in a child process: the cost of a
  full mTLS handshake (ECDSA P-256 SVIDs from the mesh CA, with the SPIFFE ID check) over a
  bare TCP connect, and the cost of one request/response over a kept-alive TLS connection
  over the same exchange in plaintext;
* **whole path** — sequential keep-alive GETs to a local uvicorn server (child process):
  bare httpx plaintext, bare httpx with hand-wired mTLS, meshlib's sync and async mesh
  transports without and with telemetry; plus a cProfile of the mesh path split by
  package.

Modules: :mod:`.settings` (profile, constants), :mod:`.timing`, :mod:`.identities`,
:mod:`.backend` (the server child process), :mod:`.mesh` (engine, tracer), the four
parts :mod:`.imports`, :mod:`.layers`, :mod:`.tls` and :mod:`.path`, :mod:`.report`
(Markdown, PNG) and :mod:`.cli` (the run and the command line).
"""

from __future__ import annotations

from benchmarks.micro.cli import main, run
from benchmarks.micro.settings import Profile

__all__ = ["Profile", "main", "run"]
