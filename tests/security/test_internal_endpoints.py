"""Finding 7: `/_forwarder/*` is private: not served through the public proxy unless configured."""

from __future__ import annotations

import anyio
import httpx
import pytest

from forwarder.dev import Cluster
from forwarder.rpc.signing import sign
from forwarder.security import SecurityPolicy

from ..unit.asgi import body_of, call, http_scope, status_of
from .harness import SECRET, nodes

pytestmark = pytest.mark.anyio

VIA_PROXY = [(b"fly-client-ip", b"198.51.100.9")]


@pytest.mark.parametrize(
    "path", ["/_forwarder/health", "/_forwarder/metrics", "/_forwarder/rpc/record", "/_forwarder/x"]
)
@pytest.mark.parametrize("node", ["primary", "replica"])
async def test_internal_endpoints_are_refused_through_the_public_proxy(path: str, node: str) -> None:
    body = b'{"args":["x"],"kwargs":{}}'
    signature = (b"forwarder-signature", sign(SECRET.encode(), "POST", path, body).encode())
    async with nodes() as n:
        app = n.primary_app if node == "primary" else n.replica_app
        with anyio.fail_after(5):
            public = await call(
                app, http_scope("POST" if "rpc" in path else "GET", path, [*VIA_PROXY, signature]), body
            )
            private = await call(app, http_scope("GET", "/_forwarder/health"))
    assert status_of(public) == 403 and b"FORWARDER_PUBLIC_HEALTH" in body_of(public)
    assert b'"txid"' not in body_of(public) and b"primary.internal" not in body_of(public)
    assert status_of(private) == 200
    assert n.ledger.calls == []


async def test_public_health_exposes_health_only() -> None:
    async with nodes(security=SecurityPolicy(public_health=True)) as n:
        with anyio.fail_after(5):
            health = await call(n.replica_app, http_scope("GET", "/_forwarder/health", VIA_PROXY))
            metrics = await call(n.replica_app, http_scope("GET", "/_forwarder/metrics", VIA_PROXY))
    assert status_of(health) == 200 and status_of(metrics) == 403


@pytest.mark.e2e
async def test_through_the_edge_internal_endpoints_are_private_and_direct_they_answer(real_cluster: Cluster) -> None:
    assert real_cluster.edge_url is not None
    async with httpx.AsyncClient(timeout=5) as client:
        for path in ("/_forwarder/health", "/_forwarder/metrics"):
            through_edge = await client.get(real_cluster.edge_url + path)
            assert through_edge.status_code == 403, through_edge.text
            assert "role" not in through_edge.text
        rpc = await client.post(real_cluster.edge_url + "/_forwarder/rpc/example_app.board.post_message", content=b"{}")
        assert rpc.status_code == 403
        # Fly's health checks reach the machine over the private network, without Fly-Client-IP.
        for node in real_cluster.nodes:
            assert (await client.get(node.url + "/_forwarder/health")).status_code == 200
