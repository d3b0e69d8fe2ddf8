"""A FAKE of the Consul HTTP API, for testing py-consul without a Consul binary.

No Consul ships on PyPI or in Debian, so nothing here is verified against a real Consul.
The answers are built from the recorded responses of HashiCorp's
``@hashicorp/consul-api-double`` npm package (fetched by :func:`api_double_dir`, never
copied into the repository): ``v1/agent/services`` gives the agent's service record,
``v1/health/service/_`` (a JavaScript template, rendered once by ``render_double.js`` with
faker replaced by fixed values) gives the shape of a health entry (``Node``, ``Service``,
``Checks``), and ``v1/health/service/.config`` the ``X-Consul-Index`` rule of blocking
queries. The registered state (services, TTL checks, the index) is the fake's own.

What it implements, which is what meshlib calls through py-consul: ``PUT
/v1/agent/service/register`` (with one TTL check), ``PUT /v1/agent/service/deregister/ID``,
``PUT /v1/agent/check/pass/service:ID``, ``GET /v1/agent/services``, ``GET
/v1/health/service/NAME`` (``passing``, ``tag``, blocking ``index``/``wait`` and
``X-Consul-Index``), and ACLs reduced to one token: a request without it is 403.
TTL expiry, anti-entropy, DeregisterCriticalServiceAfter, several agents and datacenters
are NOT simulated.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "consul-api-double"
PACKAGE = "@hashicorp/consul-api-double@6.1.5"
MAX_WAIT = 10.0  # a blocking query never holds a test longer


def api_double_dir() -> Path:
    """The unpacked npm package (``npm pack`` into build/ on first use).

    Raises:
        RuntimeError: npm is missing or the fetch failed, with npm's message.
    """
    package = CACHE / "package"
    if (package / "v1" / "health" / "service" / "_").is_file():
        return package
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("consul-api-double: npm is not installed")
    CACHE.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "pack", PACKAGE, "--silent"],
        cwd=CACHE,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"consul-api-double: npm pack failed: {done.stderr.strip()[-300:]}")
    tgz = CACHE / done.stdout.strip().splitlines()[-1]
    with tarfile.open(tgz) as tar:
        tar.extractall(CACHE, filter="data")
    return package


def _render(package: Path, url_path: str) -> Any:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("consul-api-double: node is not installed")
    script = Path(__file__).with_name("render_double.js")
    out = subprocess.run(
        [node, str(script), str(package), url_path],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(out.stdout)


class Recorded:
    """The prototypes taken from the package."""

    def __init__(self, package: Path) -> None:
        services = json.loads((package / "v1" / "agent" / "services").read_text())
        self.agent_service: dict[str, Any] = next(iter(services.values()))
        entry = _render(package, "/v1/health/service/proto")[0]
        self.node: dict[str, Any] = entry["Node"]
        self.health_service: dict[str, Any] = entry["Service"]
        self.check: dict[str, Any] = entry["Checks"][0]
        config = (package / "v1" / "health" / "service" / ".config").read_text()
        if "X-Consul-Index" not in config:
            raise RuntimeError("consul-api-double: health/service/.config has no X-Consul-Index")


def _ci(body: dict[str, Any], *names: str) -> Any:
    """A field of a register body, whatever its case (Consul's decoder ignores case)."""
    lowered = {k.lower(): v for k, v in body.items()}
    for name in names:
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


class FakeConsul:
    """One fake agent (node ``node-0``) on 127.0.0.1; ``with FakeConsul(...) as c: c.url``."""

    def __init__(self, package: Path, *, token: str | None = None, node_address: str = "127.0.0.1"):
        self.recorded = Recorded(package)
        self.token = token
        self.node_address = node_address
        self.services: dict[str, dict[str, Any]] = {}  # id -> agent service record
        self.status: dict[str, str] = {}  # service id -> its check's status
        self.index = 1
        self.requests: list[tuple[str, str]] = []
        self.broken = False  # answer every request with malformed JSON
        self.closed = False
        self._cond = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeConsul:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self.closed = True  # blocking queries answer now
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ state

    def _bump(self) -> None:
        self.index += 1
        self._cond.notify_all()

    def add(
        self,
        name: str,
        sid: str,
        address: str,
        port: int,
        tags: list[str],
        status: str = "passing",
        meta: dict[str, str] | None = None,
    ) -> None:
        """Register a service as another tool would (not through meshlib)."""
        with self._cond:
            self._register(
                {
                    "Name": name,
                    "ID": sid,
                    "Address": address,
                    "Port": port,
                    "Tags": tags,
                    "Meta": meta or {},
                    "Check": {"TTL": "30s"},
                }
            )
            self.status[sid] = status
            self._bump()

    def set_status(self, sid: str, status: str) -> None:
        with self._cond:
            self.status[sid] = status
            self._bump()

    def _register(self, body: dict[str, Any]) -> None:
        record = copy.deepcopy(self.recorded.agent_service)
        name = _ci(body, "Name")
        sid = _ci(body, "ID") or name
        record.update(
            ID=sid,
            Service=name,
            Tags=list(_ci(body, "Tags") or []),
            Meta=dict(_ci(body, "Meta") or {}),
            Port=int(_ci(body, "Port") or 0),
            Address=_ci(body, "Address") or "",
            Connect=None,
            Kind="",
            ProxyDestination="",
        )
        check = _ci(body, "Check") or {}
        record["_ttl"] = _ci(check, "TTL")
        self.services[sid] = record
        self.status.setdefault(sid, "critical")  # a new TTL check starts critical

    def _health(self, name: str, passing: bool, tags: list[str]) -> list[dict[str, Any]]:
        out = []
        for sid, record in sorted(self.services.items()):
            if record["Service"] != name or not all(t in record["Tags"] for t in tags):
                continue
            if passing and self.status.get(sid) != "passing":
                continue
            node = copy.deepcopy(self.recorded.node)
            node.update(
                Node="node-0",
                Address=self.node_address,
                TaggedAddresses={"lan": self.node_address, "wan": self.node_address},
                Meta={},
            )
            service = copy.deepcopy(self.recorded.health_service)
            service.update({k: record[k] for k in ("ID", "Service", "Tags", "Address", "Port")})
            service["Meta"] = record["Meta"]
            check = copy.deepcopy(self.recorded.check)
            check.update(
                Node="node-0",
                CheckID=f"service:{sid}",
                Name=f"Service '{name}' check",
                Type="ttl",
                Status=self.status.get(sid, "critical"),
                ServiceID=sid,
                ServiceName=name,
                ServiceTags=record["Tags"],
                Notes="",
                Output="",
            )
            out.append({"Node": node, "Service": service, "Checks": [check]})
        return out

    # ------------------------------------------------------------------ HTTP

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: Any, index: int | None = None) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                if index is not None:
                    self.send_header("X-Consul-Index", str(index))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _allowed(self) -> bool:
                if fake.token is None or self.headers.get("X-Consul-Token") == fake.token:
                    return True
                self._send(403, b"Permission denied: token with AccessorID '' lacks permission")
                return False

            def do_PUT(self) -> None:
                url = urlsplit(self.path)
                fake.requests.append(("PUT", url.path))
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if not self._allowed():
                    return
                with fake._cond:
                    if url.path == "/v1/agent/service/register":
                        fake._register(json.loads(raw))
                    elif m := re.fullmatch(r"/v1/agent/service/deregister/(.+)", url.path):
                        if fake.services.pop(m[1], None) is None:
                            return self._send(404, b"Unknown service ID")
                        fake.status.pop(m[1], None)
                    elif m := re.fullmatch(r"/v1/agent/check/pass/service:(.+)", url.path):
                        if m[1] not in fake.services:
                            return self._send(404, b"CheckID does not have associated TTL")
                        if fake.status.get(m[1]) == "passing":
                            return self._send(200, b"")  # no change, no new index
                        fake.status[m[1]] = "passing"
                    else:
                        return self._send(404, b"no such endpoint in the fake")
                    fake._bump()
                self._send(200, b"")

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                fake.requests.append(("GET", url.path))
                query = parse_qs(url.query, keep_blank_values=True)
                if not self._allowed():
                    return
                if fake.broken:
                    return self._send(200, b"{not json", index=fake.index)
                if url.path == "/v1/agent/services":
                    with fake._cond:
                        body = {
                            sid: {k: v for k, v in r.items() if not k.startswith("_")}
                            for sid, r in fake.services.items()
                        }
                    return self._send(200, body)
                if m := re.fullmatch(r"/v1/health/service/(.+)", url.path):
                    want = int(query.get("index", ["0"])[0] or 0)
                    wait = _duration(query.get("wait", ["5m"])[0])
                    deadline = time.monotonic() + min(wait, MAX_WAIT)
                    with fake._cond:
                        while want and fake.index <= want and not fake.closed:  # blocking
                            left = deadline - time.monotonic()
                            if left <= 0:
                                break
                            fake._cond.wait(left)
                        body = fake._health(m[1], "passing" in query, query.get("tag", []))
                        index = fake.index
                    if fake.broken:  # set while the query was blocked
                        return self._send(200, b"{not json", index=index)
                    return self._send(200, body, index=index)
                self._send(404, b"no such endpoint in the fake")

        return Handler


def _duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text)
    if m is None:
        return 300.0
    return float(m[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m[2]]


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
