"""Finding 1: a replica is not an open proxy. Only origin-form targets are served; whatever is
forwarded goes to the primary's configured URL."""

from __future__ import annotations

import anyio
import pytest
from starlette.types import Scope

from forwarder.dev import Cluster
from forwarder.policy import RoutingPolicy

from ..unit.asgi import body_of, call, http_scope, status_of
from .harness import PRIMARY_URL, nodes
from .wire import decoy_server, raw_exchange, request

pytestmark = pytest.mark.anyio

HOSTILE_TARGETS = [
    b"http://127.0.0.1:9/latest/meta-data/iam",
    b"https://169.254.169.254/latest/meta-data/",
    b"@127.0.0.1:9/admin",
    b"127.0.0.1:9",
    b"*",
    b"//127.0.0.1:9/x",
    b"//:x",
    b"",
]


def _scope(method: str, raw: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    scope = http_scope(method, raw.decode("latin-1"), headers)
    scope["raw_path"] = raw
    return scope


@pytest.mark.parametrize("mode", ["proxy", "replay", "auto"])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
@pytest.mark.parametrize("raw", HOSTILE_TARGETS)
async def test_a_hostile_target_is_refused_before_anything_is_forwarded(mode: str, method: str, raw: bytes) -> None:
    async with nodes(policy=RoutingPolicy(mode=mode)) as n:  # type: ignore[arg-type]
        with anyio.fail_after(5):
            sent = await call(n.replica_app, _scope(method, raw), b"payload")
    assert status_of(sent) == 400
    assert b"target" in body_of(sent) or b"path" in body_of(sent)
    assert n.nothing_happened()


async def test_a_read_with_a_far_future_cookie_and_an_absolute_target_is_refused() -> None:
    cookie = [(b"cookie", b"__txid=00000000000fffff")]
    async with nodes(policy=RoutingPolicy(on_lag="forward"), replication_timeout=0.05) as n:
        with anyio.fail_after(5):
            sent = await call(n.replica_app, _scope("GET", b"http://127.0.0.1:9/latest/meta-data/iam", cookie))
    assert status_of(sent) == 400 and n.nothing_happened()
    assert n.replica.lag() == 0.0


async def test_a_forwarded_request_goes_to_the_configured_primary_only() -> None:
    async with nodes() as n, n.client(n.replica_app) as client:
        with anyio.fail_after(5):
            response = await client.post("/api/write?x=1", content=b"hello", headers={"host": "evil.example:666"})
    assert response.status_code == 201
    assert [str(r.url) for r in n.sent] == [PRIMARY_URL + "/api/write?x=1"]
    assert n.ledger.writes == [("POST", "/api/write", b"hello")]


# -- against a real cluster, over raw sockets -----------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("method", "extra"),
    [("POST", ()), ("PUT", ()), ("DELETE", ()), ("GET", ("Cookie: __txid=00000000ffffffff",))],
)
async def test_absolute_form_to_a_real_replica_never_reaches_the_other_host(
    on_stack: Cluster, stack: str, method: str, extra: tuple[str, ...]
) -> None:
    replica = on_stack.replicas[0]
    async with decoy_server() as decoy:
        target = f"{decoy.url}/latest/meta-data/iam"
        reply = await raw_exchange(replica.url, request(method, target, "x", *extra, body=b"{}"))
        if stack == "h11":  # the target as it came: the middleware refuses it
            assert reply.status == 400, reply
        else:  # httptools reduced it to its path: the cluster serves that path, which the app has not
            assert reply.status == 404 and "forwarder-node" in reply.headers, reply
        assert b"DECOY" not in reply.body
        assert decoy.hits == []


@pytest.mark.e2e
async def test_a_websocket_handshake_to_an_at_host_target_is_refused(real_cluster: Cluster) -> None:
    replica = real_cluster.replicas[0]
    async with decoy_server() as decoy:
        host, port = decoy.url.removeprefix("http://").split(":")
        handshake = request(
            "GET",
            f"@{host}:{port}/admin",
            "x",
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ).replace(b"Connection: close", b"Connection: Upgrade")
        reply = await raw_exchange(replica.url, handshake)
        assert reply.status == 400, reply
        assert decoy.hits == []


@pytest.mark.e2e
async def test_the_edge_follows_the_same_rule(real_cluster: Cluster) -> None:
    assert real_cluster.edge_url is not None
    async with decoy_server() as decoy:
        host, port = decoy.url.removeprefix("http://").split(":")
        for target in (f"@{host}:{port}/x", f"{decoy.url}/x"):
            reply = await raw_exchange(real_cluster.edge_url, request("POST", target, "x", body=b"{}"))
            assert reply.status == 400, reply
            assert b"edge:" in reply.body
        assert decoy.hits == []
