"""The meshlib demo: a three-service mesh on loopback, zero trust from the first request.

Run from the repository root with ``make demo`` or ``python -m examples.demo``. It

1. starts a control service (``meshctl control serve``) in a fresh temporary directory,
2. applies ``examples/policies/mesh.yaml`` and creates one join token per service,
3. starts frontend, orders (HTTP), two inventory instances (gRPC, v1 and v2) and reviews
   (a plain app with an Envoy sidecar) as separate processes,
4. joins the mesh itself as the workload ``intruder`` and shows:

   a. normal traffic frontend -> orders -> inventory (the last hop over gRPC), with the
      80/20 v1/v2 split;
   b. a caller without permission (intruder -> inventory's GetItem) refused with
      PERMISSION_DENIED and ``x-mesh-flag: AUTHZ_DENIED`` in the trailing metadata;
   c. a plaintext caller refused by orders under STRICT PeerAuthentication;
   d. policy changes applied live, without restarting anything: orders goes PERMISSIVE,
      then intruder is granted inventory's GetItem, then the grant is revoked;
   e. sidecar mode: reviews is a plain app (no meshlib) behind ``meshctl sidecar`` (the real
      Envoy, configured over xDS by the same control service); intruder (library) calls it
      and it calls orders (library) through its Envoy, mTLS and authz on every hop;

5. prints a summary table, stops every process, and exits 0 only if every check passed.

Everything listens on 127.0.0.1 with OS-chosen ports; nothing is kept outside the temp dir
(``--keep`` keeps it, and it is kept anyway when a check fails, for the logs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
import httpx

import meshlib

try:
    from examples.generated import inventory_pb2 as pb
    from examples.generated import inventory_pb2_grpc as pb_grpc
    from examples.grpc_inventory import GET_ITEM, item_dict, trailing_metadata
except ImportError as exc:  # the stubs are generated, never committed
    raise SystemExit(
        f"{exc}: compile examples/protos/*.proto first with `make protos` (or run `make demo`)"
    ) from exc

REPO = Path(__file__).resolve().parent.parent
POLICIES = Path(__file__).resolve().parent / "policies"
TRUST_DOMAIN = "mesh.local"
REQUESTS = 50
REGISTER_TIMEOUT = 30.0
PROPAGATION_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
RPC_TIMEOUT = 10.0
FLAG = "x-mesh-flag"


def spiffe(service: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{service}"


def heading(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 84 - len(text)), flush=True)


def say(text: str = "") -> None:
    print(f"    {text}", flush=True)


@dataclass
class Check:
    step: str
    expected: str
    observed: str = "(not run)"
    ok: bool = False


@dataclass
class RpcAnswer:
    """The outcome of one gRPC ``GetItem`` call, as the checks read it."""

    code: str
    details: str = ""
    trailing: dict[str, str] = field(default_factory=dict)
    item: dict[str, Any] | None = None

    @property
    def flag(self) -> str | None:
        return self.trailing.get(FLAG)


def get_item(inventory: Any, item: str) -> RpcAnswer:
    """``GetItem`` over the demo's meshed channel; a refusal is an answer, not an error."""
    try:
        reply = inventory.GetItem(pb.ItemRequest(item=item), timeout=RPC_TIMEOUT)
    except grpc.RpcError as exc:
        return RpcAnswer(exc.code().name, exc.details() or "", trailing_metadata(exc))
    return RpcAnswer("OK", item=item_dict(reply))


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Demo:
    workdir: Path
    children: list[Child] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    control_url: str = ""
    reviews_inbound: int = 0

    # ------------------------------------------------------------------ processes

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def check_alive(self) -> None:
        for child in self.children:
            if child.proc.poll() is not None:
                tail = child.log.read_text(errors="replace").strip().splitlines()[-15:]
                raise RuntimeError(
                    f"{child.name} exited with status {child.proc.returncode}; log tail:\n"
                    + "\n".join(f"      | {line}" for line in tail)
                )

    def stop_all(self) -> list[str]:
        """SIGTERM the workloads, then the control service; kill laggards. Return who was killed.

        Workloads go first so that they deregister while the control service still runs.
        """
        killed: list[str] = []
        workloads = [c for c in self.children if c.name != "control"]
        control = [c for c in self.children if c.name == "control"]
        for group in (workloads, control):
            for child in group:
                if child.proc.poll() is None:
                    child.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            for child in group:
                try:
                    child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    killed.append(child.name)
                    if child.name != "control":
                        say(
                            f"{child.name} did not exit within {STOP_TIMEOUT:g}s of SIGTERM: killed"
                        )
                    child.proc.kill()
                    child.proc.wait(timeout=STOP_TIMEOUT)
        return killed

    # ------------------------------------------------------------------ meshctl

    def meshctl(self, *args: str, stdin: str | None = None) -> str:
        argv = [sys.executable, "-m", "meshlib_control.cli", "--data-dir", str(self.data_dir)]
        done = subprocess.run(
            [*argv, *args], input=stdin, capture_output=True, text=True, timeout=30, cwd=REPO
        )
        if done.returncode != 0:
            raise RuntimeError(f"meshctl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    @property
    def data_dir(self) -> Path:
        return self.workdir / "control"

    def instances(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(self.meshctl("get", "instances", "-o", "json"))
        return items

    # ------------------------------------------------------------------ setup

    def start_control(self) -> None:
        heading("setup: control service, policies, tokens, services")
        child = self.spawn(
            "control",
            [
                sys.executable,
                "-m",
                "meshlib_control.cli",
                "--data-dir",
                str(self.data_dir),
                "control",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--instance-ttl",
                "15s",
                "--xds-listen",
                "127.0.0.1:0",
            ],
        )
        deadline = time.monotonic() + 20
        marker = "control service ready at "
        while time.monotonic() < deadline:
            self.check_alive()
            for line in child.log.read_text(errors="replace").splitlines():
                if line.startswith(marker):
                    self.control_url = line[len(marker) :].strip()
                    say(f"control service ready at {self.control_url}")
                    return
            time.sleep(0.05)
        raise RuntimeError("the control service did not become ready within 20s")

    def apply(self, name: str) -> None:
        path = POLICIES / name
        say(f"$ meshctl apply -f examples/policies/{name}")
        for line in self.meshctl("apply", "-f", str(path)).splitlines():
            say(f"  {line}")

    def token(self, service: str, uses: int = 1) -> str:
        return self.meshctl(
            "token", "create", "--service", service, "--uses", str(uses), "--ttl", "10m"
        ).strip()

    def workload_env(self, service: str, token: str, instance: str, labels: str) -> dict[str, str]:
        return {
            "MESH_CONTROL_URL": self.control_url,
            "MESH_SERVICE": service,
            "MESH_NAMESPACE": "default",
            "MESH_TOKEN": token,
            "MESH_DATA_DIR": str(self.workdir / "workloads" / instance),
            "MESH_LABELS": labels,
            "MESH_START_TIMEOUT": "20",
        }

    def start_services(self) -> None:
        tokens = {
            "frontend": self.token("frontend"),
            "orders": self.token("orders"),
            "inventory": self.token("inventory", uses=2),
            "reviews": self.token("reviews"),
        }
        say("created join tokens for frontend, orders, inventory (2 uses), reviews")
        http = ["--port", "0", "--plaintext-port", "0"]
        plan = [
            ("frontend", "frontend", "version=v1", "HTTP", ["examples.services.frontend", *http]),
            ("orders", "orders", "version=v1", "HTTP", ["examples.services.orders", *http]),
            ("inventory", "inventory-v1", "version=v1", "gRPC", ["examples.grpc_inventory"]),
            ("inventory", "inventory-v2", "version=v2", "gRPC", ["examples.grpc_inventory"]),
        ]
        for service, instance, labels, protocol, args in plan:
            env = self.workload_env(service, tokens[service], instance, labels)
            self.spawn(instance, [sys.executable, "-m", *args, "--port", "0"], env)
            say(f"started {instance:<13} ({protocol}, labels {labels})")
        self.start_reviews(tokens["reviews"])
        want = Counter({"frontend": 1, "orders": 1, "inventory": 2, "reviews": 1})
        deadline = time.monotonic() + REGISTER_TIMEOUT
        start = time.monotonic()
        while True:
            self.check_alive()
            items = self.instances()
            seen = Counter(i["service"] for i in items if i.get("port"))
            if all(seen[s] >= n for s, n in want.items()):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {dict(seen)} registered after {REGISTER_TIMEOUT:g}s")
            time.sleep(0.25)
        say(f"all 5 instances registered after {time.monotonic() - start:.1f}s:")
        for line in self.meshctl("get", "instances").splitlines():
            say(f"  {line}")

    def start_reviews(self, token: str) -> None:
        """reviews: a plain app (no meshlib) and ``meshctl sidecar`` running Envoy for it."""
        app_port, self.reviews_inbound, outbound, admin = (_free_port() for _ in range(4))
        self.spawn(
            "reviews-app",
            [sys.executable, "-m", "examples.services.reviews", "--port", str(app_port),
             "--outbound-port", str(outbound)],
        )  # fmt: skip
        argv = [sys.executable, "-m", "meshlib_control.cli", "--control", self.control_url]
        self.spawn(
            "reviews-sidecar",
            [*argv, "sidecar", "--service", "reviews", "--app-port", str(app_port),
             "--inbound-port", str(self.reviews_inbound), "--outbound-port", str(outbound),
             "--admin-port", str(admin), "--envoy-admin-port", str(_free_port()),
             "--token", token, "--sidecar-data-dir", str(self.workdir / "workloads" / "reviews")],
        )  # fmt: skip
        say(
            f"started reviews       (HTTP, a plain app on :{app_port}; `meshctl sidecar` runs "
            f"Envoy: mTLS in on :{self.reviews_inbound}, out on 127.0.0.1:{outbound})"
        )

    # ------------------------------------------------------------------ checks

    def check(self, step: str, expected: str) -> Check:
        c = Check(step, expected)
        self.checks.append(c)
        return c

    def step_a(self, http: httpx.Client) -> None:
        heading(
            f"a. normal traffic: {REQUESTS} requests intruder -> frontend -> orders "
            "-gRPC-> inventory"
        )
        status_check = self.check(f"a. {REQUESTS} x GET frontend /shop/<n>", f"{REQUESTS} x 200")
        chain_check = self.check(
            "a. caller seen at each hop", "frontend<-intruder orders<-frontend inventory<-orders"
        )
        split_check = self.check("a. inventory v1/v2 split", "~80/20 (v1 30-49, v2 >= 1)")
        # Warm-up: the driver's snapshot may not list frontend's endpoint for a few ms more.
        deadline = time.monotonic() + 10
        while True:
            try:
                if http.get("http://frontend/shop/warmup").status_code == 200:
                    break
            except (httpx.HTTPError, meshlib.MeshError):
                pass
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        statuses: Counter[int] = Counter()
        versions: Counter[str] = Counter()
        chains: Counter[tuple[Any, ...]] = Counter()
        sample: Any = None
        start = time.monotonic()
        for n in range(REQUESTS):
            try:
                response = http.get(f"http://frontend/shop/{n}")
            except (httpx.HTTPError, meshlib.MeshError) as exc:
                statuses[-1] += 1
                say(f"request {n}: {type(exc).__name__}: {exc}")
                continue
            statuses[response.status_code] += 1
            if response.status_code != 200:
                say(f"request {n}: {response.status_code} {response.text[:300]}")
                continue
            body = response.json()
            inventory = body["upstream"]["upstream"]
            versions[inventory["version"]] += 1
            chains[(body["caller"], body["upstream"]["caller"], inventory["caller"])] += 1
            sample = sample or body
        elapsed = time.monotonic() - start
        say("one response (frontend's JSON, with what orders and inventory said nested;")
        say(f"orders asked inventory by gRPC, {GET_ITEM}):")
        for line in json.dumps(sample, indent=2).splitlines():
            say(f"  {line}")
        say(f"{REQUESTS} requests in {elapsed:.2f}s; statuses: {dict(statuses)}")
        status_check.observed = ", ".join(f"{v} x {k}" for k, v in sorted(statuses.items()))
        status_check.ok = statuses[200] == REQUESTS
        expected_chain = (spiffe("intruder"), spiffe("frontend"), spiffe("orders"))
        chain_check.ok = chains == Counter({expected_chain: statuses[200]}) and statuses[200] > 0
        chain_check.observed = (
            "as expected on every 200"
            if chain_check.ok
            else "; ".join(f"{n} x {c}" for c, n in chains.items()) or "no answers"
        )
        v1, v2 = versions["v1"], versions["v2"]
        say(f"inventory versions that answered: v1={v1} v2={v2} (TrafficPolicy weights 80/20)")
        split_check.observed = f"v1 {v1} / v2 {v2}"
        split_check.ok = 30 <= v1 <= 49 and v2 >= 1 and v1 + v2 == REQUESTS

    def step_b(self, inventory: Any) -> None:
        heading("b. a caller without permission: intruder -gRPC-> inventory directly")
        c = self.check(
            "b. intruder -gRPC-> inventory", "PERMISSION_DENIED, AUTHZ_DENIED (AuthorizationPolicy)"
        )
        answer = get_item(inventory, "42")
        say(f"gRPC {GET_ITEM} item=42 as {spiffe('intruder')}")
        say(f"-> status {answer.code}")
        say(f"   details: {answer.details}")
        say("   trailing metadata:")
        for key, value in answer.trailing.items():
            say(f"     {key}: {value or '(empty)'}")
        policy = answer.trailing.get("x-mesh-policy", "")
        c.observed = f"{answer.code}, {answer.flag} ({policy.rpartition('/')[2] or 'no policy'})"
        c.ok = (
            answer.code == "PERMISSION_DENIED"
            and answer.flag == "AUTHZ_DENIED"
            and policy.endswith("/inventory-allow-orders")
            and "no ALLOW rule matched" in answer.details
        )

    def orders_plaintext_url(self) -> str:
        ports = [i.get("plaintextPort") for i in self.instances() if i["service"] == "orders"]
        if not ports or not ports[0]:
            raise RuntimeError("orders registered no plaintext port")
        return f"http://127.0.0.1:{ports[0]}/orders/42"

    def step_c(self, plain: httpx.Client, url: str) -> None:
        heading("c. a plaintext caller under STRICT: plain httpx -> orders' plaintext port")
        c = self.check("c. plaintext -> orders (STRICT)", "403 PLAINTEXT_REFUSED")
        response = plain.get(url)
        body = _json(response)
        say(f"GET {url} (no TLS, no identity)")
        say(f"-> {response.status_code}, x-mesh-flag: {response.headers.get('x-mesh-flag')}")
        say(f"   error: {body.get('error')}")
        flag = response.headers.get("x-mesh-flag")
        c.observed = f"{response.status_code} {flag}"
        c.ok = response.status_code == 403 and flag == "PLAINTEXT_REFUSED"

    def step_d(self, inventory: Any, plain: httpx.Client, url: str) -> None:
        heading("d. live policy changes (no restart): orders PERMISSIVE, then an authz grant")
        c1 = self.check(
            "d. apply permissive-orders; plaintext -> orders",
            f"200 within {PROPAGATION_TIMEOUT:g}s",
        )
        self.apply("permissive-orders.yaml")
        polled = _poll(lambda: plain.get(url), lambda r: r.status_code == 200)
        _report(c1, polled)
        if polled.ok and polled.last is not None:
            body = polled.last.json()
            say(
                f"   orders saw caller {body['caller']!r} and still called inventory over gRPC "
                "with mTLS:"
            )
            say(f"   inventory saw caller {body['upstream']['caller']!r}")

        c2 = self.check(
            "d. apply allow-intruder; intruder -gRPC-> inventory",
            f"OK within {PROPAGATION_TIMEOUT:g}s",
        )
        self.apply("allow-intruder.yaml")
        polled_rpc = _poll(lambda: get_item(inventory, "42"), lambda a: a.code == "OK")
        _report(c2, polled_rpc)
        if polled_rpc.ok and polled_rpc.last is not None and polled_rpc.last.item is not None:
            item = polled_rpc.last.item
            say(f"   inventory {item['version']} saw caller {item['caller']!r}")

        c3 = self.check(
            "d. delete allow-intruder; intruder -gRPC-> inventory",
            f"PERMISSION_DENIED within {PROPAGATION_TIMEOUT:g}s",
        )
        say("$ meshctl delete authorizationpolicy inventory-allow-intruder")
        say(
            f"  {self.meshctl('delete', 'authorizationpolicy', 'inventory-allow-intruder').strip()}"
        )
        polled_rpc = _poll(
            lambda: get_item(inventory, "42"), lambda a: a.code == "PERMISSION_DENIED"
        )
        _report(c3, polled_rpc)

    def step_e(self, http: httpx.Client, plain: httpx.Client) -> None:
        heading("e. sidecar mode: intruder -> reviews (plain app + Envoy) -> orders -> inventory")
        c1 = self.check("e. intruder -> reviews -> orders (library <-> sidecar)", "200")
        c2 = self.check(
            "e. caller seen at each hop", "reviews<-intruder orders<-reviews inventory<-orders"
        )
        c3 = self.check("e. plaintext -> reviews' Envoy (STRICT)", "refused (no TLS)")
        polled = _poll(
            lambda: http.get("http://reviews/reviews/42"), lambda r: r.status_code == 200
        )
        status = polled.last.status_code if polled.last is not None else "no answer"
        c1.ok = polled.ok
        c1.observed = f"{status} (first answer after {polled.seconds:.2f}s)"
        say(f"-> {status} after {polled.attempts} attempt(s)")
        if polled.last is not None:
            body = _json(polled.last)
            for line in json.dumps(body, indent=2).splitlines()[:14]:
                say(f"  {line}")
            orders = body.get("upstream") or {}
            inventory = orders.get("upstream") or {} if isinstance(orders, dict) else {}
            seen = (body.get("caller"), orders.get("caller"), inventory.get("caller"))
            c2.ok = seen == (spiffe("intruder"), spiffe("reviews"), spiffe("orders"))
            c2.observed = "as expected" if c2.ok else repr(seen)
            say(f"   answered by {polled.last.headers.get('server')}; callers seen: {seen}")
        url = f"http://127.0.0.1:{self.reviews_inbound}/reviews/42"
        try:
            response = plain.get(url)
            c3.observed = f"answered {response.status_code}"
        except httpx.HTTPError as exc:
            c3.observed = f"refused ({type(exc).__name__})"
            c3.ok = True
        say(f"GET {url} without TLS -> {c3.observed}")
        say("$ meshctl get sidecars")
        for line in self.meshctl("get", "sidecars").splitlines():
            say(f"  {line}")

    # ------------------------------------------------------------------ driver

    def drive(self) -> None:
        self.start_control()
        self.apply("mesh.yaml")
        self.start_services()
        mesh = meshlib.Mesh(
            service="intruder",
            control_url=self.control_url,
            token=self.token("intruder"),
            data_dir=self.workdir / "workloads" / "intruder",
            start_timeout=20,
        )
        mesh.start()
        say(f"the demo process joined the mesh as {mesh.spiffe_id}")
        try:
            with (
                mesh.client(timeout=10.0) as http,
                httpx.Client(timeout=10.0) as plain,
                mesh.grpc_channel("inventory") as channel,
            ):
                inventory = pb_grpc.InventoryStub(channel)
                self.step_a(http)
                self.step_b(inventory)
                url = self.orders_plaintext_url()
                self.step_c(plain, url)
                self.step_d(inventory, plain, url)
                self.step_e(http, plain)
        finally:
            mesh.close()  # deregisters and stops the agent before the control service goes

    def summary(self) -> bool:
        heading("summary")
        rows = [("step", "expected", "observed", "result")]
        rows += [(c.step, c.expected, c.observed, "OK" if c.ok else "FAIL") for c in self.checks]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for n, row in enumerate(rows):
            say("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
            if n == 0:
                say("  ".join("-" * w for w in widths))
        return bool(self.checks) and all(c.ok for c in self.checks)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"error": response.text[:200]}
    return body if isinstance(body, dict) else {"body": body}


T = TypeVar("T", httpx.Response, RpcAnswer)


@dataclass
class Polled(Generic[T]):
    ok: bool
    seconds: float
    attempts: int
    last: T | None


def _poll(call: Callable[[], T], done: Callable[[T], bool]) -> Polled[T]:
    """Call until *done*, for at most PROPAGATION_TIMEOUT seconds; time runs from the call."""
    start = time.monotonic()
    last: T | None = None
    attempts = 0
    while True:
        attempts += 1
        with contextlib.suppress(httpx.HTTPError, meshlib.MeshError):
            last = call()
            if done(last):
                return Polled(True, time.monotonic() - start, attempts, last)
        took = time.monotonic() - start
        if took > PROPAGATION_TIMEOUT:
            return Polled(False, took, attempts, last)
        time.sleep(0.02)


def _report(check: Check, polled: Polled[Any]) -> None:
    last = polled.last
    if last is None:
        status, flag = "no answer", ""
    elif isinstance(last, RpcAnswer):
        status, flag = last.code, last.flag or ""
    else:
        status, flag = str(last.status_code), last.headers.get(FLAG, "")
    if polled.ok:
        say(
            f"-> {status} on poll #{polled.attempts}, {polled.seconds * 1000:.0f} ms after the "
            "command returned: the change was live without a restart"
        )
        check.observed = f"{status} after {polled.seconds:.2f}s"
    else:
        say(f"-> still {status} {flag} after {polled.seconds:.1f}s ({polled.attempts} polls)")
        check.observed = f"{status} {flag} after {polled.seconds:.1f}s".replace("  ", " ")
    check.ok = polled.ok


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM unwind like Ctrl-C, so the children are stopped either way."""

    def handler(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="meshlib-demo-"))
    demo = Demo(workdir)
    print(f"meshlib demo; work dir {workdir} (logs in {workdir / 'logs'})", flush=True)
    started = time.monotonic()
    error: str | None = None
    killed: list[str] = []
    with _sigterm_as_interrupt():
        try:
            demo.drive()
        except KeyboardInterrupt:
            error = "interrupted"
        except Exception as exc:  # report, then still stop every process
            error = f"{type(exc).__name__}: {exc}"
        finally:
            heading("shutdown: SIGTERM to every process, workloads first")
            killed = demo.stop_all()
    names = [c.name for c in demo.children]
    if names:
        shutdown = demo.check(
            "shutdown: every process exits on SIGTERM", f"{len(names)}/{len(names)}"
        )
        shutdown.observed = f"{len(names) - len(killed)}/{len(names)}"
        shutdown.ok = not killed
        if not killed:
            say(f"all {len(names)} processes exited on SIGTERM")
    if error is not None:
        print(f"\nerror: {error}", file=sys.stderr, flush=True)
    ok = demo.summary() and error is None
    say(f"\nfinished in {time.monotonic() - started:.1f}s: {'PASS' if ok else 'FAIL'}")
    if ok and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        say(f"kept {workdir} (logs in {workdir / 'logs'})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
