"""A small synchronous client of etcd v3's JSON gateway (``/v3/kv/*``, ``/v3/lease/*``,
``/v3/watch``), over httpx.

etcd serves the gateway on every member's client URL; it is a documented v3 API that
needs neither grpcio nor protobuf pins (docs/operations.md says why it was chosen over
``etcd3``, ``etcd3gw`` and ``aetcd``). Keys and values travel base64-encoded; int64
fields travel as strings and are omitted when zero, as protobuf's JSON mapping does.

Each call tries the member that answered last, then the others. Every failure to reach a
member that can decide (unreachable, no leader, request timed out) is raised as
:class:`~meshlib_control.store.base.StoreUnavailable`, naming the cause.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from meshlib_control.store.base import StoreUnavailable

__all__ = ["KV", "EtcdClient", "WatchBatch", "b64"]

HEALTH_TIMEOUT = 1.5
DEFAULT_TIMEOUT = 2.5  # etcd itself answers "request timed out" after ~7 s without quorum


def b64(text: str | bytes) -> str:
    """*text* as the gateway's base64."""
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


@dataclass(frozen=True, slots=True)
class KV:
    """One key as etcd holds it."""

    key: str
    value: bytes
    mod_revision: int
    lease: int = 0

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> KV:
        return cls(
            key=_unb64(raw.get("key")).decode(),
            value=_unb64(raw.get("value")),
            mod_revision=int(raw.get("mod_revision", 0)),
            lease=int(raw.get("lease", 0)),
        )


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """One watch response: the events in revision order, as (kv, deleted)."""

    revision: int
    events: tuple[tuple[KV, bool], ...]
    compacted: int = 0  # non-zero: the watch was cancelled, history before this is gone


def prefix_end(prefix: str) -> str:
    """The ``range_end`` that selects every key starting with *prefix*."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return b64(bytes(raw))


class EtcdClient:
    """Calls to one etcd cluster, given its members' ``host:port`` client addresses."""

    def __init__(
        self,
        endpoints: tuple[str, ...],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("endpoints: at least one etcd member")
        self.endpoints = endpoints
        self.timeout = timeout
        self.tls = tls
        self._scheme = "https" if tls else "http"
        self._current = 0
        self._watch_socket: socket.socket | None = None
        self._aborted = False
        verify: ssl.SSLContext | bool = True  # plain http: nothing to verify
        if tls is not None:  # etcd's --trusted-ca-file / --client-cert-auth
            ca, cert, key = tls
            verify = ssl.create_default_context(cafile=str(ca))
            verify.load_cert_chain(str(cert), str(key))
        self._http = httpx.Client(timeout=timeout, trust_env=False, verify=verify)

    def clone(self, *, timeout: float | None = None) -> EtcdClient:
        """Another client of the same members (own connections), for another thread."""
        return EtcdClient(
            self.endpoints, timeout=self.timeout if timeout is None else timeout, tls=self.tls
        )

    def abort_watch(self) -> None:
        """End a :meth:`watch` blocked reading, from another thread (for good)."""
        self._aborted = True
        sock = self._watch_socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def _url(self, i: int, path: str) -> str:
        return f"{self._scheme}://{self.endpoints[i]}{path}"

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST *body* to *path* on the first member that answers; the decoded reply."""
        causes: list[str] = []
        n = len(self.endpoints)
        for step in range(n):
            i = (self._current + step) % n
            try:
                reply = self._http.post(self._url(i, path), json=body)
            except httpx.TimeoutException as exc:
                if isinstance(exc, httpx.ConnectTimeout):
                    causes.append(f"{self.endpoints[i]}: ConnectTimeout")
                    continue
                # A member that took the request and timed out: the cluster cannot decide
                # now (no quorum); asking the next one would only wait as long again.
                causes.append(f"{self.endpoints[i]}: {type(exc).__name__} after {self.timeout}s")
                break
            except httpx.HTTPError as exc:
                # Gone, refused, or a TLS refusal (a client certificate etcd does not trust):
                # another member may answer.
                detail = str(exc).strip()
                shown = f"{type(exc).__name__}: {detail[:160]}" if detail else type(exc).__name__
                causes.append(f"{self.endpoints[i]}: {shown}")
                continue
            data: dict[str, Any] = reply.json() if reply.content else {}
            if reply.status_code != 200:
                message = str(data.get("message") or data.get("error") or reply.status_code)
                causes.append(f"{self.endpoints[i]}: {message}")
                continue
            self._current = i
            return data
        raise StoreUnavailable("etcd " + "; ".join(causes))

    # ------------------------------------------------------------------ kv

    def range(self, key: str, *, prefix: bool = False) -> tuple[int, list[KV]]:
        """(revision, keys) for *key*, or every key under it with *prefix* (linearizable)."""
        body: dict[str, Any] = {"key": b64(key)}
        if prefix:
            body["range_end"] = prefix_end(key)
        data = self.post("/v3/kv/range", body)
        revision = int(data.get("header", {}).get("revision", 0))
        return revision, [KV.from_json(kv) for kv in data.get("kvs", [])]

    def get(self, key: str) -> KV | None:
        """One key, read through the leader (linearizable)."""
        return next(iter(self.range(key)[1]), None)

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]]) -> tuple[bool, int]:
        """Run one transaction: (whether *compare* held and *success* ran, revision)."""
        data = self.post("/v3/kv/txn", {"compare": compare, "success": success})
        return bool(data.get("succeeded", False)), int(data.get("header", {}).get("revision", 0))

    @staticmethod
    def unchanged(key: str, mod_revision: int) -> dict[str, Any]:
        """A compare: *key* was last modified at *mod_revision* (0: it does not exist)."""
        return {
            "key": b64(key),
            "target": "MOD",
            "result": "EQUAL",
            "mod_revision": str(mod_revision),
        }

    @staticmethod
    def put(key: str, value: bytes, lease: int = 0) -> dict[str, Any]:
        """A put request for :meth:`txn`."""
        request: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            request["lease"] = str(lease)
        return {"request_put": request}

    @staticmethod
    def delete(key: str) -> dict[str, Any]:
        """A delete request for :meth:`txn`."""
        return {"request_delete_range": {"key": b64(key)}}

    # ------------------------------------------------------------------ leases

    def grant(self, ttl: int) -> int:
        """A new lease of *ttl* seconds; its id."""
        return int(self.post("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew *lease*; its TTL now, 0 when it no longer exists."""
        data = self.post("/v3/lease/keepalive", {"ID": str(lease)})
        return int(data.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        """End *lease*, deleting its keys (an unknown lease is not an error)."""
        try:
            self.post("/v3/lease/revoke", {"ID": str(lease)})
        except StoreUnavailable as exc:
            if "not found" not in exc.message:
                raise

    # ------------------------------------------------------------------ health and watch

    def healthy(self) -> tuple[bool, str]:
        """Whether some member has a leader and answers; else the causes, per member."""
        causes: list[str] = []
        for i, endpoint in enumerate(self.endpoints):
            try:
                reply = self._http.get(self._url(i, "/health"), timeout=HEALTH_TIMEOUT)
                if reply.status_code == 200 and reply.json().get("health") == "true":
                    return True, ""
                causes.append(f"{endpoint}: no leader")
            except httpx.TimeoutException:
                causes.append(f"{endpoint}: /health unanswered after {HEALTH_TIMEOUT:g} s")
            except (httpx.HTTPError, ValueError) as exc:
                causes.append(f"{endpoint}: {type(exc).__name__}")
        return False, (
            "etcd cannot take writes, no member reports a leader (quorum lost, or the "
            "members are unreachable): " + "; ".join(causes)
        )

    def watch(self, prefix: str, start_revision: int, endpoint: int) -> Iterator[WatchBatch]:
        """Stream the changes under *prefix* from *start_revision*, from member *endpoint*.

        Ends (or raises httpx.HTTPError) when the member goes away; the caller resumes
        from the last revision it saw, on another member.
        """
        body = {
            "create_request": {
                "key": b64(prefix),
                "range_end": prefix_end(prefix),
                "start_revision": str(start_revision),
            }
        }
        timeout = httpx.Timeout(5.0, read=None)
        # etcd's require-leader (clientv3.WithRequireLeader) through the gateway: a member
        # cut off from the leader ends the watch instead of holding it open and silent,
        # so the caller moves to a member that still gets the changes.
        headers = {"Grpc-Metadata-hasleader": "true"}
        with self._http.stream(
            "POST", self._url(endpoint, "/v3/watch"), json=body, headers=headers, timeout=timeout
        ) as stream:
            if stream.status_code != 200:
                return
            network = stream.extensions.get("network_stream")
            self._watch_socket = network.get_extra_info("socket") if network else None
            if self._aborted:
                return
            for line in stream.iter_lines():
                if not line.strip():
                    continue
                message = json.loads(line)
                if "error" in message:  # e.g. "etcdserver: no leader"
                    return
                result = message.get("result", {})
                revision = int(result.get("header", {}).get("revision", 0))
                if result.get("canceled"):
                    yield WatchBatch(revision, (), compacted=int(result.get("compact_revision", 1)))
                    return
                events = tuple(
                    (KV.from_json(e.get("kv", {})), e.get("type") == "DELETE")
                    for e in result.get("events", [])
                )
                if events:
                    yield WatchBatch(revision, events)
