"""Finding 3: the primary's router sees exactly the path the replica classified."""

from __future__ import annotations

import json
import urllib.parse

import anyio
import httpx
import pytest

from forwarder.dev import Cluster
from forwarder.middleware.target import target_problem, upstream_target

from ..unit.asgi import call, http_scope, status_of
from .harness import nodes
from .wire import raw_exchange, request

pytestmark = pytest.mark.anyio

CONFUSING = [
    b"//x/api/write",
    b"//x/_forwarder/health",
    b"/%2Fx/api/write",
    b"/api/../api/write",
    b"/api/%2e%2e/_forwarder/health",
    b"/api/./write",
    b"/_forwarder/../api/write",
]


@pytest.mark.parametrize("raw", CONFUSING)
async def test_confusing_paths_are_refused_on_the_replica_and_run_nothing(raw: bytes) -> None:
    scope = http_scope("POST", urllib.parse.unquote(raw.decode()))
    scope["raw_path"] = raw
    async with nodes() as n:
        with anyio.fail_after(5):
            sent = await call(n.replica_app, scope, b"x")
    assert status_of(sent) == 400
    assert n.nothing_happened()


@pytest.mark.parametrize(
    "raw",
    [b"/api/wr%69te", b"/api/write%3Fx", b"/api/write%23frag", b"/api/wr%25ite", b"/api/%E2%9C%93", b"/api/a%2Fb"],
)
async def test_the_primary_sees_the_path_the_replica_classified(raw: bytes) -> None:
    path = urllib.parse.unquote(raw.decode())
    scope = http_scope("POST", path)
    scope["raw_path"] = raw
    async with nodes() as n:
        with anyio.fail_after(5):
            await call(n.replica_app, scope, b"x")
    assert n.ledger.paths == [path]
    assert [urllib.parse.unquote(r.url.raw_path.decode().partition("?")[0]) for r in n.sent] == [path]


def test_the_upstream_target_round_trips_through_percent_decoding() -> None:
    for path in ["/a b", "/%", "/a?b#c", "/ü/✓", "/a//b", "/a;b=c", "/\n"]:
        scope = {"path": path, "raw_path": b"/x", "query_string": b""}
        assert target_problem(scope) is None
        assert urllib.parse.unquote(upstream_target(scope)) == path


# -- against a real cluster, over raw sockets -----------------------------------------------------


async def _count(cluster: Cluster) -> int:
    async with httpx.AsyncClient() as client:
        response = await client.get(cluster.primary.url + "/api/messages")
    return len(response.json()["messages"])


@pytest.mark.e2e
@pytest.mark.parametrize("target", ["//x/api/messages", "//x/_forwarder/health", "/api/../api/messages"])
async def test_a_real_replica_refuses_confusing_paths(real_cluster: Cluster, target: str) -> None:
    before = await _count(real_cluster)
    body = json.dumps({"author": "mallory", "text": "confused"}).encode()
    for node in (real_cluster.replicas[0], real_cluster.primary):
        reply = await raw_exchange(node.url, request("POST", target, "x", "Content-Type: application/json", body=body))
        assert reply.status == 400, reply
    assert await _count(real_cluster) == before
