from __future__ import annotations

import asyncio
import re
import sqlite3

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from forwarder import Txid
from forwarder.endpoints import primary_endpoint
from forwarder.node_headers import seal_replay, sign_node_headers
from forwarder.policy import RoutingPolicy

from .asgi import body_of, call, headers_of, http_scope, status_of
from .nodes import SECRET, Nodes, two_nodes

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("over_http_and_channel")]

FLY = (b"fly-client-ip", b"198.51.100.1")


def board(ref: list[Nodes]) -> Starlette:
    async def write(request: Request) -> Response:
        body = await request.body()
        ref[0].log.commit()
        return JSONResponse({"wrote": body.decode(), "node": _node(ref)}, status_code=201)

    async def read(request: Request) -> Response:
        return JSONResponse({"node": _node(ref)})

    async def readonly_get(request: Request) -> Response:
        # What a GET that writes (a session touch, a counter) hits on a replica.
        if _node(ref) == "node-r":
            raise sqlite3.OperationalError("attempt to write a readonly database")
        ref[0].log.commit()
        return PlainTextResponse(f"counted on {_node(ref)}: {(await request.body()).decode()}")

    async def broken(request: Request) -> Response:
        raise RuntimeError("a genuine bug")

    @primary_endpoint
    async def admin(request: Request) -> Response:
        return PlainTextResponse(f"admin on {_node(ref)}")

    return Starlette(
        routes=[
            Route("/w", write, methods=["POST", "GET"]),
            Route("/r", read),
            Route("/count", readonly_get, methods=["GET", "POST"]),
            Route("/broken", broken),
            Route("/admin", admin),
        ]
    )


def _node(ref: list[Nodes]) -> str:
    from forwarder.context import current_forwarder

    forwarder = current_forwarder()
    assert forwarder is not None
    return forwarder.topology.node_id


# -- writes on a replica ------------------------------------------------------------------------


async def test_replay_mode_answers_fly_replay_without_calling_the_app() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: board(ref), policy=RoutingPolicy(mode="replay")) as nodes:
        ref.append(nodes)
        sent = await call(nodes.replica_app, http_scope("POST", "/w"), b"hello")
    assert status_of(sent) == 409
    headers = headers_of(sent)
    # The state is sealed with the cluster secret, so a client cannot forge the replayed hop.
    assert re.fullmatch(
        r"instance=node-p;state=method\.\d+\.[0-9a-f]{32};fallback=prefer_self", headers["fly-replay"][0]
    )
    assert headers["forwarder-forwarded"] == ["replay"] and headers["forwarder-node"] == ["node-r"]
    assert body_of(sent) == b""
    assert nodes.log.head == 0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([FLY], "replay"),
        ([FLY, (b"content-length", b"5")], "replay"),
        ([FLY, (b"content-length", str(2 * 1024 * 1024).encode())], "proxy"),
        ([FLY, (b"transfer-encoding", b"chunked")], "proxy"),
        ([], "proxy"),
        ([FLY, (b"fly-replay-failed", b"instance=node-p;reason=timeout")], "proxy"),
    ],
)
async def test_auto_mode_replays_small_bodies_behind_fly_and_proxies_the_rest(
    headers: list[tuple[bytes, bytes]], expected: str
) -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: board(ref)) as nodes:
        ref.append(nodes)
        nodes.log.auto_apply = True
        sent = await call(nodes.replica_app, http_scope("POST", "/w", headers), b"hello")
    assert headers_of(sent)["forwarder-forwarded"] == [expected]
    if expected == "proxy":
        assert status_of(sent) == 201 and headers_of(sent)["forwarder-node"] == ["node-p"]


async def test_replay_falls_back_to_proxy_when_the_primary_is_unknown() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: board(ref), policy=RoutingPolicy(mode="replay"), primary_region=None) as nodes:
        ref.append(nodes)
        nodes.log.auto_apply = True
        nodes.replica.topology.primary_id = None
        sent = await call(nodes.replica_app, http_scope("POST", "/w"), b"x")
    assert status_of(sent) == 201 and headers_of(sent)["forwarder-forwarded"] == ["proxy"]


@pytest.mark.parametrize(
    "hop",
    [
        (b"fly-replay-src", b"instance=node-r;region=ams;t=1;state=method"),
        (b"fly-replay-src", b"instance=node-r,region=ams,state=readonly"),
        (b"forwarder-forwarded-by", b"node-q"),  # signed by a node, as another node sends it
    ],
)
async def test_loop_guard(hop: tuple[bytes, bytes]) -> None:
    ref: list[Nodes] = []
    key = SECRET.encode()
    if hop[0].startswith(b"forwarder-"):
        headers = sign_node_headers(key, "POST", "/w", [hop])
    else:  # a replay made by one of our nodes: its state was sealed by that node
        headers = [(hop[0], seal_replay(key, hop[1], "POST", "/w"))]
    async with two_nodes(lambda: board(ref), policy=RoutingPolicy(mode="replay")) as nodes:
        ref.append(nodes)
        sent = await call(nodes.replica_app, http_scope("POST", "/w", headers), b"x")
    assert status_of(sent) == 503 and headers_of(sent)["retry-after"] == ["1"]
    assert b"not the primary" in body_of(sent)
    assert nodes.log.head == 0


async def test_a_replay_by_someone_else_is_not_a_hop_of_ours() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: board(ref), policy=RoutingPolicy(mode="replay")) as nodes:
        ref.append(nodes)
        hop = (b"fly-replay-src", b"instance=x;region=syd;state=pinned-region")
        sent = await call(nodes.replica_app, http_scope("POST", "/w", [hop]), b"x")
    assert status_of(sent) == 409


async def test_passthrough_writes_run_where_they_land_without_cookie() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: board(ref), policy=RoutingPolicy(passthrough=("/w",))) as nodes:
        ref.append(nodes)
        sent = await call(nodes.replica_app, http_scope("POST", "/w"), b"x")
    assert status_of(sent) == 201
    assert headers_of(sent)["forwarder-node"] == ["node-r"]
    assert "set-cookie" not in headers_of(sent)


async def test_always_forward_sends_reads_to_the_primary() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: board(ref), policy=RoutingPolicy(always_forward=("/r",))) as nodes:
        ref.append(nodes)
        sent = await call(nodes.replica_app, http_scope("GET", "/r"))
    assert b'"node":"node-p"' in body_of(sent)


# -- the primary --------------------------------------------------------------------------------


async def test_the_primary_sets_the_cookie_and_txid_on_writes() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: board(ref)) as nodes:
        ref.append(nodes)
        sent = await call(nodes.primary_app, http_scope("POST", "/w", [(b"x-forwarded-proto", b"https")]), b"x")
    headers = headers_of(sent)
    assert headers["forwarder-txid"] == ["0000000000000001"]
    assert headers["set-cookie"] == ["__txid=0000000000000001; Path=/; Max-Age=300; HttpOnly; SameSite=Lax; Secure"]


async def test_the_primary_drops_a_cookie_ahead_of_itself() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: board(ref)) as nodes:
        ref.append(nodes)
        ahead = await call(nodes.primary_app, http_scope("GET", "/r", [(b"cookie", b"__txid=00000000000000ff")]))
        nodes.log.commit()
        fine = await call(nodes.primary_app, http_scope("GET", "/r", [(b"cookie", b"__txid=0000000000000001")]))
    assert headers_of(ahead)["set-cookie"] == ["__txid=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"]
    assert status_of(ahead) == 200
    assert "set-cookie" not in headers_of(fine)


# -- reads on a replica with the cookie ---------------------------------------------------------


async def test_a_read_waits_for_the_cookie_txid() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: board(ref)) as nodes:
        ref.append(nodes)
        nodes.log.commit()
        with anyio.fail_after(5):
            request = asyncio.create_task(
                call(nodes.replica_app, http_scope("GET", "/r", [(b"cookie", b"__txid=0000000000000001")]))
            )
            await asyncio.sleep(0.05)
            assert not request.done()
            nodes.replica_engine.apply()
            sent = await request
    assert status_of(sent) == 200 and headers_of(sent)["forwarder-node"] == ["node-r"]


@pytest.mark.parametrize(
    ("on_lag", "status", "node"), [("forward", 200, "node-p"), ("error", 504, None), ("stale", 200, "node-r")]
)
async def test_on_lag_policy(on_lag: str, status: int, node: str | None) -> None:
    ref: list[Nodes] = []
    policy = RoutingPolicy(on_lag=on_lag)  # type: ignore[arg-type]
    async with two_nodes(lambda: board(ref), policy=policy, replication_timeout=0.05) as nodes:
        ref.append(nodes)
        nodes.log.commit()
        sent = await call(nodes.replica_app, http_scope("GET", "/r", [(b"cookie", b"__txid=0000000000000001")]))
    assert status_of(sent) == status
    if node:
        assert f'"node":"{node}"'.encode() in body_of(sent)
    if on_lag == "stale":
        assert headers_of(sent)["forwarder-stale"] == ["1"]
    if on_lag == "error":
        assert b"did not reach 0000000000000001" in body_of(sent)


async def test_a_cookie_far_ahead_is_forwarded_then_dropped_by_the_primary() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: board(ref), replication_timeout=0.05) as nodes:
        ref.append(nodes)
        with anyio.fail_after(2):
            sent = await call(nodes.replica_app, http_scope("GET", "/r", [(b"cookie", b"__txid=0fffffffffffffff")]))
    assert status_of(sent) == 200
    assert headers_of(sent)["set-cookie"] == ["__txid=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"]


async def test_a_malformed_cookie_is_ignored() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: board(ref)) as nodes:
        ref.append(nodes)
        sent = await call(nodes.replica_app, http_scope("GET", "/r", [(b"cookie", b"__txid=<script>")]))
    assert status_of(sent) == 200 and headers_of(sent)["forwarder-node"] == ["node-r"]


# -- late write discovery -----------------------------------------------------------------------


async def test_a_get_with_no_body_framing_is_forwarded_with_no_body() -> None:
    # HTTP/1 without Content-Length or Transfer-Encoding: no body, none kept for the second run.
    ref: list[Nodes] = []
    async with two_nodes(lambda: board(ref)) as nodes:
        ref.append(nodes)
        nodes.log.auto_apply = True
        sent = await call(nodes.replica_app, http_scope("GET", "/count"))
    assert status_of(sent) == 200 and body_of(sent) == b"counted on node-p: "


async def test_an_http2_body_without_content_length_is_kept_for_the_primary() -> None:
    # HTTP/2 frames a body without Content-Length: the replica keeps what the app read.
    ref: list[Nodes] = []
    async with two_nodes(lambda: board(ref)) as nodes:
        ref.append(nodes)
        nodes.log.auto_apply = True
        sent = await call(nodes.replica_app, http_scope("GET", "/count", http_version="2"), b"sent over h2")
    assert status_of(sent) == 200 and body_of(sent) == b"counted on node-p: sent over h2"


@pytest.mark.parametrize("mode", ["proxy", "replay"])
async def test_a_readonly_error_on_a_replica_is_forwarded_not_shown(mode: str) -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: board(ref), policy=RoutingPolicy(mode=mode)) as nodes:  # type: ignore[arg-type]
        ref.append(nodes)
        nodes.log.auto_apply = True
        sent = await call(nodes.replica_app, http_scope("GET", "/count"), b"the body")
    if mode == "proxy":
        assert status_of(sent) == 200
        assert body_of(sent) == b"counted on node-p: the body"
    else:
        assert status_of(sent) == 409
        assert re.fullmatch(
            r"instance=node-p;state=readonly\.\d+\.[0-9a-f]{32};fallback=prefer_self", headers_of(sent)["fly-replay"][0]
        )
    assert [m for m in sent if m["type"] == "http.response.start"][0]["status"] != 500


async def test_a_primary_endpoint_is_forwarded_from_a_replica() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: board(ref)) as nodes:
        ref.append(nodes)
        sent = await call(nodes.replica_app, http_scope("GET", "/admin"))
        local = await call(nodes.primary_app, http_scope("GET", "/admin"))
    assert body_of(sent) == b"admin on node-p"
    assert body_of(local) == b"admin on node-p"


async def test_other_errors_still_reach_the_client_as_500() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: board(ref)) as nodes:
        ref.append(nodes)
        with pytest.raises(RuntimeError, match="genuine bug"):
            await call(nodes.replica_app, http_scope("GET", "/broken"))


async def test_an_error_after_the_response_started_is_not_forwarded() -> None:
    async def streaming_then_readonly(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise sqlite3.OperationalError("attempt to write a readonly database")

    async with two_nodes(lambda: streaming_then_readonly) as nodes:
        sent: list[Message] = []
        with pytest.raises(sqlite3.OperationalError):
            await nodes.replica_app(http_scope("GET", "/x"), _empty_receive, _collect(sent))
    assert [m["type"] for m in sent] == ["http.response.start"]


async def _empty_receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _collect(sent: list[Message]) -> Send:
    async def send(message: Message) -> None:
        sent.append(message)

    return send


# -- health and metrics -------------------------------------------------------------------------


async def test_health_turns_503_when_lag_exceeds_max_lag() -> None:
    async with two_nodes(Starlette) as nodes:
        nodes.replica.max_lag = 0.05
        nodes.replica.lag_meter.observe(Txid(5), nodes.replica.tracker.position)
        await asyncio.sleep(0.1)
        lagging = await call(nodes.replica_app, http_scope("GET", "/_forwarder/health"))
        nodes.replica_engine.apply(Txid(5))
        healthy = await call(nodes.replica_app, http_scope("GET", "/_forwarder/health"))
    assert status_of(lagging) == 503 and b"exceeds max_lag" in body_of(lagging)
    assert status_of(healthy) == 200 and b'"lag":0.0' in body_of(healthy)


async def test_metrics_count_forwarded_requests_and_waits() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: board(ref)) as nodes:
        ref.append(nodes)
        nodes.log.auto_apply = True
        await call(nodes.replica_app, http_scope("POST", "/w"), b"x")
        await call(nodes.replica_app, http_scope("POST", "/w", [FLY]), b"x")
        sent = await call(nodes.replica_app, http_scope("GET", "/_forwarder/metrics"))
    text = body_of(sent).decode()
    assert 'forwarder_forwarded_requests_total{mode="proxy",reason="method"} 1.0' in text
    assert 'forwarder_forwarded_requests_total{mode="replay",reason="method"} 1.0' in text
    assert 'forwarder_replication_wait_seconds_count{cause="write"} 1.0' in text
    assert "forwarder_txid 1.0" in text
    assert "forwarder_is_primary 0.0" in text


@pytest.mark.parametrize("failed", [False, True])
async def test_a_websocket_replay_that_came_back_by_fallback_is_relayed_not_replayed_again(failed: bool) -> None:
    """Fly's proxy refuses a replay from a request it delivered by `fallback` (PA02): the handshake is
    relayed to the primary instead, here unreachable, so 503."""
    ref: list[Nodes] = []
    policy = RoutingPolicy(always_forward=("/live",))
    async with two_nodes(lambda: board(ref), policy=policy) as nodes:
        ref.append(nodes)
        nodes.replica.topology.primary_url = "http://127.0.0.1:9"  # nothing listens: refused at once
        headers = [FLY] + ([(b"fly-replay-failed", b"instance=node-p;reason=retries_exhausted")] if failed else [])
        scope = http_scope("GET", "/live", headers, type="websocket", extensions={"websocket.http.response": {}})
        incoming: list[Message] = [{"type": "websocket.connect"}]
        sent: list[Message] = []

        async def receive() -> Message:
            return incoming.pop(0) if incoming else {"type": "websocket.disconnect", "code": 1000}

        async def send(message: Message) -> None:
            sent.append(message)

        with anyio.fail_after(10):
            await nodes.replica_app(scope, receive, send)
    assert sent[0]["type"] == "websocket.http.response.start"
    if failed:
        assert sent[0]["status"] == 503
    else:
        assert sent[0]["status"] == 409
        assert any(k == b"fly-replay" for k, _ in sent[0]["headers"])
