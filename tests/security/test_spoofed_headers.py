"""Finding 8: node headers are believed only when a node signed them; hop-by-hop headers and
those named in `Connection` are not passed on; `X-Forwarded-For` is appended to."""

from __future__ import annotations

import time

import anyio
import pytest

from forwarder import Forwarder, MemoryEngine, MemoryLog, Role, Topology
from forwarder.dev import Cluster
from forwarder.middleware.websocket import _upstream_headers
from forwarder.node_headers import (
    NODE_SIGNATURE,
    opened_replay_source,
    seal_replay,
    sign_node_headers,
    verified_headers,
)
from forwarder.policy import RoutingPolicy

from ..unit.asgi import call, http_scope, status_of
from .harness import SECRET, nodes
from .wire import raw_exchange, request

pytestmark = pytest.mark.anyio

KEY = SECRET.encode()


async def test_a_client_forwarded_by_does_not_skip_the_read_your_writes_wait() -> None:
    spoof = [(b"forwarder-forwarded-by", b"node-x"), (b"cookie", b"__txid=0000000000000001")]
    async with nodes(policy=RoutingPolicy(on_lag="error"), replication_timeout=0.05, auto_apply=False) as n:
        n.ledger.log.commit()  # the primary is at 1, the replica at 0
        with anyio.fail_after(5):
            sent = await call(n.replica_app, http_scope("GET", "/api/read", spoof))
    assert status_of(sent) == 504  # it waited (and timed out) instead of serving stale data
    assert n.replica.tracker.waiting == 0


async def test_a_client_forwarded_by_does_not_trip_the_loop_guard_and_is_not_passed_on() -> None:
    async with nodes() as n, n.client(n.replica_app) as client:
        with anyio.fail_after(5):
            response = await client.post(
                "/api/write",
                content=b"x",
                headers={
                    "forwarder-forwarded-by": "node-x",
                    "forwarder-anything": "1",
                    NODE_SIGNATURE.decode(): "t=1,v1=" + "0" * 64,
                    "connection": "x-secret",
                    "x-secret": "hop",
                    "x-forwarded-for": "1.2.3.4",
                },
            )
    assert response.status_code == 201
    seen = n.ledger.headers[0]
    assert seen["forwarder-forwarded-by"] == "node-r"  # this replica's own, signed
    assert "forwarder-anything" not in seen and "x-secret" not in seen
    assert seen["x-forwarded-for"] == "1.2.3.4, 127.0.0.1"  # appended to; the client's first value is not trusted
    assert (
        verified_headers(KEY, "POST", "/api/write", [(k.encode(), v.encode()) for k, v in seen.items()], max_age=60)[1]
        == []
    )


@pytest.mark.parametrize("state", [b"method", b"lag", b"method.1.00000000000000000000000000000000"])
async def test_a_client_fly_replay_src_state_is_not_believed(state: bytes) -> None:
    src = [(b"fly-replay-src", b"instance=node-r;region=ams;t=1;state=" + state)]
    async with nodes(policy=RoutingPolicy(mode="proxy")) as n:
        with anyio.fail_after(5):
            sent = await call(n.replica_app, http_scope("POST", "/api/write", src), b"x")
    assert status_of(sent) == 201  # forwarded as any client write, not refused as a replay loop
    assert "state=" not in n.ledger.headers[0]["fly-replay-src"]  # the unsealed state was removed


def test_a_sealed_state_opens_only_for_its_request() -> None:
    sealed = seal_replay(KEY, b"instance=node-p;state=method", "POST", "/a", now=1000)
    assert sealed.startswith(b"instance=node-p;state=method.1000.")
    src = b"instance=node-r;t=1;" + sealed.partition(b";")[2]
    assert opened_replay_source(KEY, src, "POST", "/a", max_age=60, now=1010) == b"instance=node-r;t=1;state=method"
    for secret, method, path, now in [
        (KEY, "PUT", "/a", 1010),
        (KEY, "POST", "/b", 1010),
        (KEY, "POST", "/a", 2000),
        (b"x", "POST", "/a", 1010),
    ]:
        assert opened_replay_source(secret, src, method, path, max_age=60, now=now) == b"instance=node-r;t=1"


def test_signatures_bind_method_path_values_and_time() -> None:
    headers = sign_node_headers(
        KEY, "POST", "/a", [(b"forwarder-forwarded-by", b"n1"), (b"forwarder-reason", b"lag")], now=1000
    )
    assert verified_headers(KEY, "POST", "/a", headers, max_age=60, now=1010)[1] == []
    tampered = [(k, b"method" if k == b"forwarder-reason" else v) for k, v in headers]
    for args in [
        (KEY, "PUT", "/a", headers, 1010),
        (KEY, "POST", "/b", headers, 1010),
        (KEY, "POST", "/a", tampered, 1010),
        (KEY, "POST", "/a", headers, 1100),
        (b"other", "POST", "/a", headers, 1010),
        (None, "POST", "/a", headers, 1010),
    ]:
        secret, method, path, hs, now = args
        kept, dropped = verified_headers(secret, method, path, hs, max_age=60, now=now)
        assert set(dropped) == {b"forwarder-forwarded-by", b"forwarder-reason", NODE_SIGNATURE}
        assert not any(k.startswith(b"forwarder-") for k, _ in kept)


def test_the_client_read_token_survives() -> None:
    headers = [(b"forwarder-txid", b"0000000000000003"), (b"forwarder-forwarded-by", b"x")]
    kept, _ = verified_headers(KEY, "GET", "/", headers, max_age=60, now=time.time())
    assert kept == [(b"forwarder-txid", b"0000000000000003")]


def test_the_websocket_relay_appends_to_x_forwarded_for_and_signs_its_headers() -> None:
    replica = Forwarder(
        engine=MemoryEngine(MemoryLog(), Role.REPLICA),
        topology=Topology("node-r", "ams", Role.REPLICA, primary_url="http://p:1"),
        secret=SECRET,
    )
    scope = http_scope(
        "GET",
        "/ws",
        [
            (b"x-forwarded-for", b"6.6.6.6"),
            (b"forwarder-forwarded-by", b"evil"),
            (b"connection", b"upgrade, x-drop"),
            (b"x-drop", b"1"),
            (b"x-keep", b"1"),
        ],
    )
    out = _upstream_headers(replica, scope)
    names = [k for k, _ in out]
    assert dict(out)["x-forwarded-for"] == "6.6.6.6, 203.0.113.7"
    assert dict(out)["forwarder-forwarded-by"] == "node-r" and names.count("forwarder-forwarded-by") == 1
    assert "x-drop" not in names and "x-keep" in names and "connection" not in names
    encoded = [(k.encode(), v.encode()) for k, v in out]
    assert verified_headers(KEY, "GET", "/ws", encoded, max_age=60)[1] == []


@pytest.mark.e2e
async def test_a_spoofed_forwarded_by_on_a_real_replica_is_ignored(real_cluster: Cluster) -> None:
    replica = real_cluster.replicas[0]
    reply = await raw_exchange(
        replica.url,
        request(
            "POST",
            "/api/messages",
            "x",
            "Content-Type: application/json",
            "Forwarder-Forwarded-By: node-9",
            body=b'{"author": "a", "text": "not a loop"}',
        ),
    )
    assert reply.status == 201, reply  # forwarded as usual, not refused as a forwarding loop
    assert reply.headers["forwarder-node"] == real_cluster.primary.id
