"""Finding 2: only the primary's answers feed a replica's lag, and a client cannot point it elsewhere."""

from __future__ import annotations

import anyio
import httpx
import pytest

from forwarder.dev import Cluster
from forwarder.policy import RoutingPolicy

from ..unit.asgi import call, http_scope, status_of
from .harness import nodes
from .wire import decoy_server, raw_exchange, request

pytestmark = pytest.mark.anyio


async def test_a_far_future_cookie_does_not_turn_the_replica_red() -> None:
    cookie = [(b"cookie", b"__txid=ffffffffffffffff")]
    async with nodes(policy=RoutingPolicy(on_lag="forward"), replication_timeout=0.05) as n:
        with anyio.fail_after(5):
            sent = await call(n.replica_app, http_scope("GET", "/api/read", cookie))
            health = await call(n.replica_app, http_scope("GET", "/_forwarder/health"))
    # Forwarded to the primary (the only place it can go), which drops the impossible cookie.
    assert status_of(sent) == 200
    assert [r.url.host for r in n.sent] == ["primary.internal"]
    assert status_of(health) == 200 and n.replica.lag() == 0.0
    assert n.replica.tracker.waiting == 0


@pytest.mark.e2e
async def test_a_real_replica_cannot_be_pointed_at_a_server_claiming_a_huge_txid(on_stack: Cluster, stack: str) -> None:
    replica = on_stack.replicas[0]
    async with decoy_server("ffffffffffffffff") as decoy:
        for target in (f"{decoy.url}/api/messages", f"@{decoy.url.removeprefix('http://')}/api/messages"):
            reply = await raw_exchange(replica.url, request("GET", target, "x", "Cookie: __txid=00000000ffffffff"))
            if stack == "httptools" and target.startswith("http://"):
                # httptools reduced it to its path: read here (the cookie's wait times out, then
                # the primary serves it), never from the decoy.
                assert reply.status == 200 and reply.headers.get("forwarder-node") in {n.id for n in on_stack.nodes}
            else:
                assert reply.status == 400, reply
        assert decoy.hits == []
    async with httpx.AsyncClient() as client:
        health = await client.get(replica.url + "/_forwarder/health")
    assert health.status_code == 200 and health.json()["lag"] < 1.0
