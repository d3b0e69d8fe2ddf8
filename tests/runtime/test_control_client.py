"""Control addresses: parsing the lists, and the client's failover order and backoff.

The client tests use real sockets: ports on 127.0.0.1 that nothing listens on refuse the
connection at once. Failover onto live replicas is tested against real control services
in tests/integration/test_control_failover*.py.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from pathlib import Path

import pytest

from meshlib.config import MeshConfig, parse_control_urls
from meshlib.errors import ConfigError, ControlPlaneError
from meshlib.runtime.control_client import ControlClient
from meshlib_control.cli import _parser
from meshlib_control.sidecar.command import control_urls, xds_addresses
from meshlib_control.xds.bootstrap import sidecar_bootstrap
from meshlib_control.xds.translate import SidecarNode


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_comma_list_or_a_sequence_gives_the_addresses_in_order():
    """Entries are trimmed, trailing slashes dropped, order kept; one URL still works."""
    env = {"MESH_SERVICE": "a", "MESH_CONTROL_URL": " https://a:7443/, https://b:7443,https://c"}
    config = MeshConfig.from_env(env)
    assert config.control_urls == ("https://a:7443", "https://b:7443", "https://c")
    assert config.control_url == "https://a:7443,https://b:7443,https://c"
    listed = MeshConfig(service="a", control_url=["https://[::1]:1", "https://b.example:2"])
    assert listed.control_urls == ("https://[::1]:1", "https://b.example:2")
    assert MeshConfig(service="a", control_url="https://x:1").control_urls == ("https://x:1",)
    assert MeshConfig(service="a").control_urls == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("https://a:1,,https://b:2", "entry 2 is empty"),
        ("https://a:1,", "entry 2 is empty"),
        (" , ", "no control address given"),
        ("https://a:1,http://b:2", "entry 2 'http://b:2' must start with https://"),
        ("https://a:1,https://b:2,https://a:1/", "entry 3 'https://a:1/' repeats entry 1"),
        ("https://a:1/v1", "entry 1 'https://a:1/v1' is not https://host[:port]"),
        ("https://a:70000", "entry 1 'https://a:70000' is not https://host[:port]"),
        ("https://", "entry 1 'https://' is not https://host[:port]"),
    ],
)
def test_bad_lists_name_the_variable_and_the_entry(value, message):
    """MESH_CONTROL_URL, the control_url argument and --control each name themselves."""
    text = re.escape(message)
    with pytest.raises(ConfigError, match=rf"^MESH_CONTROL_URL \(control_url\): {text}"):
        MeshConfig.from_env({"MESH_SERVICE": "a", "MESH_CONTROL_URL": value})
    with pytest.raises(ConfigError, match=f"^control_url: {text}"):
        MeshConfig(service="a", control_url=value)
    with pytest.raises(ConfigError, match=f"^--control: {text}"):
        parse_control_urls([value], "--control")


def test_sidecar_control_flag_repeats_or_takes_a_list_and_wins_over_the_others():
    """``meshctl sidecar --control A --control B,C``; else ``meshctl --control``; else env."""
    base = ["sidecar", "--service", "a", "--app-port", "8000"]
    args = _parser().parse_args(
        [*base, "--control", "https://a:1", "--control", "https://b:2,https://c:3"]
    )
    env = {"MESH_CONTROL_URL": "https://env:1"}
    assert control_urls(args, env) == "https://a:1,https://b:2,https://c:3"
    args = _parser().parse_args(["--control", "https://top:1", *base])
    assert control_urls(args, env) == "https://top:1"
    assert control_urls(_parser().parse_args(base), env) == "https://env:1"
    assert control_urls(_parser().parse_args(base), {}) is None
    bad = _parser().parse_args([*base, "--control", "https://a:1", "--control", "https://a:1"])
    with pytest.raises(ConfigError, match=r"^--control: entry 2 'https://a:1' repeats entry 1"):
        control_urls(bad, env)
    with pytest.raises(ConfigError, match=r"^MESH_CONTROL_URL: entry 2 is empty"):
        control_urls(_parser().parse_args(base), {"MESH_CONTROL_URL": "https://a:1,"})


def test_failover_backoff_is_exponential_jittered_and_capped():
    """An address that failed k times in a row is skipped 50-100 % of base * 2**(k-1)."""
    client = ControlClient("https://127.0.0.1:1", expected="x", tls=None)
    for failures in range(1, 12):
        full = min(30.0, 0.5 * 2 ** (failures - 1))
        for _ in range(20):
            assert full / 2 <= client.backoff(failures) <= full
    assert client.backoff(100) <= 30.0


def test_every_address_is_tried_once_then_only_the_first_out_of_backoff(tmp_path: Path):
    """Both refuse: the first call tries both; the next, with both backing off, only one."""
    ports = [_closed_port(), _closed_port()]
    ctx = ssl.create_default_context()

    async def scenario() -> tuple[str, str, str]:
        client = ControlClient(
            [f"https://127.0.0.1:{p}" for p in ports],
            expected="spiffe://mesh.local/control",
            tls=lambda: ctx,
            failover_base=5.0,
        )
        try:
            with pytest.raises(ControlPlaneError) as first:
                await client.register("abc", {"port": 0})
            with pytest.raises(ControlPlaneError) as second:
                await client.register("abc", {"port": 0})
            return str(first.value), str(second.value), client.url
        finally:
            await client.aclose()

    first, second, current = asyncio.run(scenario())
    assert "unreachable at https://127.0.0.1:" in first
    assert "tried 2 of 2" in first
    assert "tried 1 of 2, the other 1 backing off" in second
    # Nothing answered, so the client did not move: still the first address.
    assert current == f"https://127.0.0.1:{ports[0]}"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("127.0.0.1:18000,,127.0.0.1:18001", "entry 2 is empty"),
        ("127.0.0.1:18000,127.0.0.1:18000", "entry 2: '127.0.0.1:18000' repeats entry 1"),
        ("127.0.0.1", "entry 1: '127.0.0.1' is not HOST:PORT"),
        ("h:1,h:0", "entry 2: 'h:0' needs a port 1-65535"),
    ],
)
def test_bad_xds_address_lists_name_the_flag_and_the_entry(value, message):
    """``--xds-address`` is checked before the agent starts, entry by entry."""
    with pytest.raises(ConfigError, match=f"^--xds-address: {re.escape(message)}"):
        xds_addresses(value)
    assert xds_addresses(" a:1, [::1]:2") == "a:1,[::1]:2"
    assert xds_addresses(None) is None


def _node(tmp_path: Path) -> SidecarNode:
    return SidecarNode(
        service="orders",
        namespace="default",
        trust_domain="mesh.local",
        inbound_port=15006,
        app_port=8000,
        outbound_port=15001,
        secrets_dir=str(tmp_path),
    )


def test_the_ads_cluster_has_one_priority_per_replica_with_outlier_ejection(tmp_path: Path):
    """Several ADS servers: priorities in list order, ejection on a failed connection, a
    fast ADS retry."""
    boot = sidecar_bootstrap(
        node_id="n1",
        node=_node(tmp_path),
        admin_port=15100,
        control_spiffe_id="spiffe://mesh.local/control",
        xds_addresses=[("127.0.0.1", 18000), ("127.0.0.2", 18001), ("127.0.0.3", 18002)],
    )
    (cluster,) = boot["static_resources"]["clusters"]
    assert cluster["type"] == "STATIC"
    groups = cluster["load_assignment"]["endpoints"]
    assert [
        (g["priority"], g["lb_endpoints"][0]["endpoint"]["address"]["socket_address"])
        for g in groups
    ] == [
        (0, {"address": "127.0.0.1", "port_value": 18000}),
        (1, {"address": "127.0.0.2", "port_value": 18001}),
        (2, {"address": "127.0.0.3", "port_value": 18002}),
    ]
    # Passive: one refused or timed-out connection ejects a replica; no health-check traffic.
    assert "health_checks" not in cluster
    outlier = cluster["outlier_detection"]
    assert outlier["split_external_local_origin_errors"] is True
    assert outlier["consecutive_local_origin_failure"] == 1
    assert outlier["max_ejection_percent"] == 100
    (grpc,) = boot["dynamic_resources"]["ads_config"]["grpc_services"]
    assert grpc["envoy_grpc"]["retry_policy"]["retry_back_off"] == {
        "base_interval": "0.25s",
        "max_interval": "5s",
    }
    # A host name among them: Envoy resolves them all (STRICT_DNS).
    named = sidecar_bootstrap(
        node_id="n1",
        node=_node(tmp_path),
        admin_port=15100,
        control_spiffe_id="spiffe://mesh.local/control",
        xds_addresses=[("127.0.0.1", 18000), ("ctl-b.example", 18001)],
    )
    assert named["static_resources"]["clusters"][0]["type"] == "STRICT_DNS"


def test_one_ads_server_has_no_outlier_ejection_and_none_is_refused(tmp_path: Path):
    """One address keeps the single-endpoint cluster; no address at all is a ValueError."""
    boot = sidecar_bootstrap(
        node_id="n1",
        node=_node(tmp_path),
        admin_port=15100,
        control_spiffe_id="spiffe://mesh.local/control",
        xds_host="127.0.0.1",
        xds_port=18000,
    )
    (cluster,) = boot["static_resources"]["clusters"]
    assert "outlier_detection" not in cluster
    assert len(cluster["load_assignment"]["endpoints"]) == 1
    with pytest.raises(ValueError, match="xds_addresses"):
        sidecar_bootstrap(
            node_id="n1",
            node=_node(tmp_path),
            admin_port=15100,
            control_spiffe_id="spiffe://mesh.local/control",
        )
