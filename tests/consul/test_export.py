"""Export to Consul: a real control service and workload against a FAKE Consul agent.

The fake (tests/consul/fake_consul.py) answers with the shapes of HashiCorp's
consul-api-double; nothing here ran against a real Consul.
"""

from __future__ import annotations

import json
from pathlib import Path

from meshlib_control.admin_client import AdminClient
from tests.consul.fake_consul import FakeConsul
from tests.integration.harness import Control, Service, free_port, wait_for

TD = "mesh.local"


def _checks(control: Control) -> dict[str, dict[str, str]]:
    out = control.meshctl("check", "-o", "json")
    return {c["name"]: c for c in json.loads(out.stdout)}


def test_instances_are_registered_passed_and_removed(tmp_path: Path, fake_consul: FakeConsul):
    """Live instances appear with address, port, label tags, SPIFFE meta and a passing TTL
    check; a stale meshlib registration is removed at start, foreign ones are untouched,
    and an instance that leaves is deregistered."""
    fake_consul.add("legacy-billing", "billing-1", "127.0.0.1", 9000, ["v1"])
    fake_consul.add("orders", "meshlib-gone", "127.0.0.1", 9001, [], meta={"meshlib-managed": TD})
    fake_consul.add("orders", "other-mesh", "127.0.0.1", 9002, [], meta={"meshlib-managed": "x.td"})
    control = Control(tmp_path / "control", "--consul", fake_consul.url)
    control.process.env = {"CONSUL_HTTP_TOKEN": "s3cret"}  # the environment variable path
    control.start()
    orders = Service(control, "orders", tmp_path, labels="zone=a,version=v2")
    try:
        orders.start()
        control.wait_serving("orders")
        (instance,) = [i for i in control.instances() if i["service"] == "orders"]
        sid = f"meshlib-{instance['id']}"
        wait_for(lambda: fake_consul.status.get(sid) == "passing", 10, "a passing TTL check")
        record = fake_consul.services[sid]
        assert record["Service"] == "orders"
        assert (record["Address"], record["Port"]) == (instance["address"], orders.port)
        assert sorted(record["Tags"]) == [
            "mesh-namespace=default",
            "meshlib",
            "version=v2",
            "zone=a",
        ]
        assert record["Meta"] == {
            "meshlib-managed": TD,
            "spiffe-id": f"spiffe://{TD}/ns/default/sa/orders",
            "mesh-mode": "library",
            "mesh-namespace": "default",
        }
        assert "meshlib-gone" not in fake_consul.services  # ours, stale: removed
        assert {"billing-1", "other-mesh"} <= set(fake_consul.services)  # never touched
        check = _checks(control)["consul export"]
        assert check["status"] == "ok", check
        assert "1 instance(s) registered" in check["message"]

        orders.stop()  # deregisters from the mesh; the export follows
        wait_for(lambda: sid not in fake_consul.services, 10, "the deregistration")
        assert {"billing-1", "other-mesh"} <= set(fake_consul.services)
    finally:
        orders.stop()
        control.stop()


def test_acl_denied_and_unreachable_are_reported_not_fatal(tmp_path: Path, fake_consul: FakeConsul):
    """A wrong token (403) and an agent nobody listens on are `meshctl check` failures
    naming the cause; the control service keeps serving."""
    denied = Control(tmp_path / "denied", "--consul", fake_consul.url, "--consul-token", "wrong")
    nowhere = Control(tmp_path / "nowhere", "--consul", f"http://127.0.0.1:{free_port()}")
    denied.start()
    nowhere.start()
    try:
        for control, kind in ((denied, "acl_denied"), (nowhere, "unreachable")):
            check = wait_for(
                lambda c=control: _checks(c).get("consul export"), 10, "a consul export check"
            )
            assert check["status"] == "fail", check
            assert f"sync: {kind}:" in check["message"], check
            assert control.meshctl("check").returncode == 1
            assert control.token("orders")  # the mesh still works
            control.apply(
                "apiVersion: meshlib.io/v1\nkind: ExternalService\nmetadata: {name: gone}\n"
                "spec: {consul: {tags: [prod]}}\n"
            )
            row = _checks(control)["externalservice default/gone"]
            assert row == {
                "name": "externalservice default/gone",
                "status": "warn",
                "message": "Consul lists no passing instance of 'gone' with tags prod",
            }
            client = AdminClient(control.data_dir)
            try:
                page = client._http.get(f"{client.urls[0]}/v1/admin/metrics").text
            finally:
                client.close()
            series = (
                'meshlib_control_consul_errors_total{consul_direction="export",'
                f'error_type="{kind}"}} '
            )
            (line,) = [x for x in page.splitlines() if x.startswith(series)]
            assert int(line.removeprefix(series)) >= 1
        assert not fake_consul.services  # nothing was written with the wrong token
    finally:
        denied.stop()
        nowhere.stop()


def test_bad_consul_url_is_refused_naming_the_flag(tmp_path: Path):
    """--consul with another scheme or a path fails at once, naming --consul."""
    for url in ("ftp://127.0.0.1:8500", "http://127.0.0.1:8500/v1", "http://:8500"):
        control = Control(tmp_path / "bad", "--consul", url)
        control.process.start()
        assert control.process.proc is not None
        assert control.process.proc.wait(30) != 0
        assert "--consul" in control.process.output(), control.process.output()
