"""ConsulImporter against the FAKE Consul, in-process: blocking queries, malformed answers
and bad entries (endpoints_from_health)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshlib.policy.decode import decode_documents
from meshlib.policy.snapshot import Endpoint
from meshlib_control.consul.client import make_client, parse_consul_url
from meshlib_control.consul.imports import ConsulImporter, endpoints_from_health
from meshlib_control.consul.status import ConsulStatus
from tests.consul.fake_consul import FakeConsul

DOC = "apiVersion: meshlib.io/v1\nkind: ExternalService\nmetadata: {name: billing}\nspec: {}\n"


def test_malformed_answers_are_reported_and_the_last_endpoints_kept(fake_consul: FakeConsul):
    """A blocking query wakes on a change; a malformed answer is counted as malformed and
    publishes nothing, so the last endpoints stay."""
    fake_consul.add("billing", "b1", "127.0.0.1", 9001, ["version=v1", "canary"])
    status = ConsulStatus(fake_consul.url)
    published: list[tuple[Endpoint, ...] | None] = []

    async def scenario() -> None:
        client = make_client(parse_consul_url(fake_consul.url), "s3cret")
        importer = ConsulImporter(
            client, status=status, publish=lambda _key, eps: published.append(eps), wait="5s"
        )
        task = asyncio.create_task(importer.run(lambda: decode_documents(DOC)))
        for _ in range(100):
            if published:
                break
            await asyncio.sleep(0.05)
        fake_consul.add("billing", "b2", "127.0.0.1", 9002, [])  # wakes the blocking query
        for _ in range(100):
            if len(published) >= 2:
                break
            await asyncio.sleep(0.05)
        fake_consul.broken = True
        fake_consul.add("billing", "b3", "127.0.0.1", 9003, [])
        for _ in range(100):
            if status.errors:
                break
            await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(scenario())
    first, second = published[0], published[1]
    assert first is not None and second is not None
    assert [(e.port, e.labels) for e in first] == [(9001, (("canary", ""), ("version", "v1")))]
    assert [e.port for e in second] == [9001, 9002]
    assert len(published) == 2  # nothing after the malformed answer
    assert dict(status.errors) == {("import", "malformed"): 1}
    assert ("GET", "/v1/health/service/billing") in fake_consul.requests


@pytest.mark.parametrize(
    ("entries", "error"),
    [
        ({"Service": {}}, "not a JSON list"),
        ([{"Node": {}}], "[0]: no Service or Node object"),
        ([{"Node": {}, "Service": {"ID": "a", "Port": 80}}], "[0]: no address"),
        (
            [{"Node": {"Address": "10.0.0.1"}, "Service": {"ID": "a", "Port": 0}}],
            "Port: not a port",
        ),
        ([{"Node": {"Address": "10.0.0.1"}, "Service": {"Port": 80}}], "Service.ID: missing"),
        (
            [{"Node": {"Address": "10.0.0.1"}, "Service": {"ID": "a", "Port": 80, "Tags": [1]}}],
            "Tags: not a list of strings",
        ),
    ],
)
def test_bad_health_entries_are_malformed(entries: Any, error: str):
    """Each malformed entry is refused naming the entry and the field."""
    with pytest.raises(ValueError, match=error.replace("[", r"\[").replace("]", r"\]")):
        endpoints_from_health(entries, "billing")


def test_the_node_address_is_used_when_the_service_has_none():
    """Consul's rule: an empty Service.Address means the node's address."""
    (endpoint,) = endpoints_from_health(
        [{"Node": {"Node": "n1", "Address": "10.0.0.7"}, "Service": {"ID": "a", "Port": 80}}],
        "billing",
    )
    assert (endpoint.id, endpoint.address, endpoint.spiffe_id) == ("consul:n1/a", "10.0.0.7", "")


def test_external_services_without_consul_are_a_warning():
    """Without --consul an ExternalService can have no endpoints: `meshctl check` says so."""
    from meshlib_control.consul.explain import external_checks
    from meshlib_control.snapshot.builder import MeshState

    state = MeshState("mesh.local", decode_documents(DOC), ())
    assert external_checks(state, consul_on=False) == [
        {
            "name": "externalservice default/billing",
            "status": "warn",
            "message": "the control service runs without --consul: it has no endpoints",
        }
    ]
    endpoint = endpoints_from_health(
        [{"Node": {"Node": "n", "Address": "10.0.0.1"}, "Service": {"ID": "a", "Port": 80}}], "b"
    )
    found = MeshState(
        "mesh.local", decode_documents(DOC), (), external=((("default", "billing"), endpoint),)
    )
    assert external_checks(found, consul_on=True) == []
