"""The edge in front of three real uvicorn nodes on loopback: n1 (fra), n2 (ams), n3 (syd).

Every node echoes its id and the request it got. `/replay?value=<fly-replay>&at=<ids>` answers
with that fly-replay on the listed nodes (all by default) and echoes elsewhere; like a careful
app it serves a request carrying `fly-replay-failed` itself, unless `stubborn=1`.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from forwarder.dev.edge import Edge, EdgeNode, serve_edge

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

REGIONS = {"n1": "fra", "n2": "ams", "n3": "syd"}


@dataclass
class Shared:
    """State the test and the in-process nodes both see."""

    sse_last_produced: anyio.Event = field(default_factory=anyio.Event)
    ws_closed: anyio.Event = field(default_factory=anyio.Event)
    ws_close_codes: list[int] = field(default_factory=list)


def node_app(node_id: str, shared: Shared) -> Starlette:
    async def echo(request: Request) -> Response:
        body = await request.body()
        return JSONResponse(
            {
                "node": node_id,
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "headers": {k: v for k, v in request.headers.items()},
                "body_len": len(body),
                "body_sha": hashlib.sha256(body).hexdigest(),
            }
        )

    def replays_here(request: Request) -> bool:
        at = request.query_params.get("at")
        if at is not None and node_id not in at.split(","):
            return False
        return "fly-replay-failed" not in request.headers or request.query_params.get("stubborn") == "1"

    async def replay(request: Request) -> Response:
        if replays_here(request):  # answers without reading the body, like a replica that must not run it
            return Response(b"", status_code=409, headers={"fly-replay": request.query_params["value"]})
        return await echo(request)

    async def replay_json(request: Request) -> Response:
        if replays_here(request):
            body = request.query_params["value"].encode()
            return Response(body, status_code=409, media_type="application/vnd.fly.replay+json")
        return await echo(request)

    async def sse(request: Request) -> Response:
        async def events() -> AsyncIterator[bytes]:
            for i in range(5):
                if i == 4:
                    shared.sse_last_produced.set()
                yield f"data: {node_id} {i}\n\n".encode()
                if i < 4:
                    await anyio.sleep(0.1)

        return StreamingResponse(events(), media_type="text/event-stream")

    async def ws_echo(websocket: WebSocket) -> None:
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol=offered[0] if offered else None, headers=[(b"x-node-ws", b"yes")])
        await websocket.send_json({"node": node_id, "headers": dict(websocket.headers.items())})
        while True:
            try:
                text = await websocket.receive_text()
            except WebSocketDisconnect as exc:
                shared.ws_close_codes.append(exc.code)
                shared.ws_closed.set()
                return
            if text == "close":
                await websocket.close(4001, "bye")
                return
            await websocket.send_text(f"{node_id}:{text}")

    async def ws_primary(websocket: WebSocket) -> None:
        if node_id != "n1":  # a replica sends the upgrade to the primary without accepting it
            await websocket.send_denial_response(Response(b"", 409, headers={"fly-replay": "instance=n1"}))
            return
        await ws_echo(websocket)

    async def ws_deny(websocket: WebSocket) -> None:
        await websocket.send_denial_response(Response(b"go away", 403, headers={"x-why": "test"}))

    return Starlette(
        routes=[
            Route("/echo", echo, methods=["GET", "POST", "PUT"]),
            Route("/replay", replay, methods=["GET", "POST"]),
            Route("/replay-json", replay_json, methods=["GET", "POST"]),
            Route("/sse", sse),
            WebSocketRoute("/ws", ws_echo),
            WebSocketRoute("/ws-primary", ws_primary),
            WebSocketRoute("/ws-deny", ws_deny),
        ]
    )


@dataclass
class Cluster:
    edge_url: str
    client: httpx.AsyncClient
    shared: Shared
    stacks: dict[str, AsyncExitStack]

    @property
    def ws_url(self) -> str:
        return "ws" + self.edge_url.removeprefix("http")

    async def stop(self, node_id: str) -> None:
        await self.stacks.pop(node_id).aclose()


@asynccontextmanager
async def cluster(*, latency: dict[str, float] | None = None) -> AsyncIterator[Cluster]:
    shared = Shared()
    stacks: dict[str, AsyncExitStack] = {}
    nodes: list[EdgeNode] = []
    try:
        for node_id, region in REGIONS.items():
            stacks[node_id] = AsyncExitStack()
            url = await stacks[node_id].enter_async_context(serve_edge(node_app(node_id, shared)))
            nodes.append(EdgeNode(node_id, region, url))
        async with (
            serve_edge(Edge(nodes, latency=latency)) as edge_url,
            httpx.AsyncClient(base_url=edge_url, trust_env=False, timeout=10) as client,
        ):
            yield Cluster(edge_url, client, shared, stacks)
    finally:
        async with anyio.create_task_group() as tg:  # each uvicorn takes a 0.1 s tick to notice it must stop
            for stack in stacks.values():
                tg.start_soon(stack.aclose)


def replay_url(value: str, path: str = "/replay", **params: str) -> str:
    query = "&".join(f"{k}={quote(v)}" for k, v in {"value": value, **params}.items())
    return f"{path}?{query}"


def echoed(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    assert response.headers["x-edge-node"] == data["node"]
    return data


AMS = {"fly-prefer-region": "ams"}


async def test_prefer_region_cookie_query_and_the_headers_fly_adds() -> None:
    with anyio.fail_after(30):
        async with cluster() as c:
            response = await c.client.get(
                "/echo",
                headers={"fly-prefer-region": "syd", "x-forwarded-for": "1.2.3.4", "fly-client-ip": "6.6.6.6"},
            )
            data = echoed(response)
            assert data["node"] == "n3"
            headers = data["headers"]
            assert headers["fly-region"] == "syd"
            assert headers["fly-client-ip"] == "127.0.0.1"
            assert headers["x-forwarded-for"] == "1.2.3.4, 127.0.0.1"
            assert headers["x-forwarded-proto"] == "http"
            assert headers["x-forwarded-port"] == c.edge_url.rsplit(":", 1)[1]
            assert headers["via"] == "2 fly.io"
            assert "fly-replay-src" not in headers
            assert response.headers["x-edge-replays"] == "0"
            assert re.fullmatch(r"[0-9a-f]{26}-syd", response.headers["fly-request-id"])

            assert echoed(await c.client.get("/echo", headers={"fly-prefer-region": "lax,ams"}))["node"] == "n2"
            assert echoed(await c.client.get("/echo", headers={"fly-force-region": "fra"}))["node"] == "n1"
            assert echoed(await c.client.get("/echo", headers={"fly-force-instance-id": "n3"}))["node"] == "n3"
            assert echoed(await c.client.get("/echo", headers={"cookie": "a=b; fly-region=fra"}))["node"] == "n1"
            assert echoed(await c.client.get("/echo?_region=syd"))["node"] == "n3"

            preferred = echoed(await c.client.get("/echo", headers={"fly-prefer-instance-id": "gone"}))
            assert preferred["headers"]["fly-preferred-instance-unavailable"] == "gone"

            forced = await c.client.get("/echo", headers={"fly-force-instance-id": "gone"})
            assert forced.status_code == 503
            assert "no node 'gone'" in forced.text and "n1 (fra)" in forced.text
            assert (await c.client.get("/echo", headers={"fly-force-region": "lax"})).status_code == 503


async def test_a_region_query_sticks_the_browser_to_that_region() -> None:
    with anyio.fail_after(30):
        async with cluster() as c:
            c.client.cookies.clear()
            first = await c.client.get("/echo?_region=ams")
            assert echoed(first)["node"] == "n2"
            assert first.headers["set-cookie"] == "fly-region=ams; Path=/; SameSite=Lax"
            # The page's own requests (its scripts, its websocket) carry no query but the cookie.
            assert {echoed(await c.client.get("/echo"))["node"] for _ in range(6)} == {"n2"}
            # Another link switches region.
            assert echoed(await c.client.get("/echo?_region=syd"))["node"] == "n3"
            assert echoed(await c.client.get("/echo"))["node"] == "n3"


async def test_round_robin_spreads_requests() -> None:
    with anyio.fail_after(30):
        async with cluster() as c:
            served = Counter([echoed(await c.client.get("/echo"))["node"] for _ in range(6)])
            assert served == {"n1": 2, "n2": 2, "n3": 2}


async def test_post_replayed_to_an_instance_keeps_method_query_body_and_state() -> None:
    body = b"hello replay " * 1000
    with anyio.fail_after(30):
        async with cluster() as c:
            url = replay_url("instance=n1;state=captured_write", at="n2,n3", extra="1")
            response = await c.client.post(url, content=body, headers=AMS)
            data = echoed(response)
            assert data["node"] == "n1"
            assert data["method"] == "POST"
            assert "extra=1" in data["query"]
            assert (data["body_len"], data["body_sha"]) == (len(body), hashlib.sha256(body).hexdigest())
            src = data["headers"]["fly-replay-src"]
            assert re.fullmatch(r"instance=n2;region=ams;t=\d{16};state=captured_write", src), src
            assert abs(int(src.split("t=")[1].split(";")[0]) / 1e6 - time.time()) < 10
            assert data["headers"]["fly-region"] == "ams"  # the edge that took the request, not n1's
            assert response.headers["x-edge-replays"] == "1"


async def test_json_form_replays_with_transform() -> None:
    instruction = {"region": "syd", "state": "j", "transform": {"set_headers": [{"name": "x-set", "value": "1"}]}}
    with anyio.fail_after(30):
        async with cluster() as c:
            data = echoed(await c.client.get(replay_url(json.dumps(instruction), "/replay-json", at="n2"), headers=AMS))
            assert data["node"] == "n3"
            assert data["headers"]["x-set"] == "1"
            assert data["headers"]["fly-replay-src"].endswith(";state=j")


async def test_replay_loop_stops_with_pa02_after_ten_replays() -> None:
    with anyio.fail_after(30):
        async with cluster() as c:
            response = await c.client.get(replay_url("elsewhere=true"))
            assert response.status_code == 502
            assert "PA02 Excess fly-replay headers" in response.text
            assert response.headers["x-edge-replays"] == "10"
            assert response.headers["content-type"].startswith("text/plain")


async def test_body_over_the_replay_limit() -> None:
    big = bytes(range(256)) * (2 * 1024 * 1024 // 256)
    with anyio.fail_after(30):
        async with cluster() as c:
            refused = await c.client.post(replay_url("instance=n1", at="n2"), content=big, headers=AMS)
            assert refused.status_code == 502
            assert "PA01" in refused.text and "cannot be replayed" in refused.text

            data = echoed(await c.client.post("/echo", content=big, headers=AMS))
            assert data["node"] == "n2"
            assert (data["body_len"], data["body_sha"]) == (len(big), hashlib.sha256(big).hexdigest())


async def test_fallback_prefer_self_brings_the_request_back() -> None:
    with anyio.fail_after(30):
        async with cluster() as c:
            data = echoed(await c.client.get(replay_url("instance=gone;fallback=prefer_self", at="n2"), headers=AMS))
            assert data["node"] == "n2"
            failed = data["headers"]["fly-replay-failed"]
            assert re.fullmatch(r"instance=gone;replay_source=n2;reason=no_candidate;elapsed_ms=\d+", failed), failed
            assert "fly-replay-src" not in data["headers"]

            stubborn = await c.client.get(
                replay_url("instance=gone;fallback=force_self", at="n2", stubborn="1"), headers=AMS
            )
            assert stubborn.status_code == 502
            assert "PA02 fallback request cannot be replayed" in stubborn.text

            lost = await c.client.get(replay_url("instance=gone", at="n2"), headers=AMS)
            assert lost.status_code == 502
            assert "no candidate" in lost.text and "no_candidate" in lost.text

            invalid = await c.client.get(replay_url("region=iad,ord", at="n2"), headers=AMS)
            assert invalid.status_code == 502
            assert "PA03" in invalid.text and 'region="iad,ord"' in invalid.text


async def test_elsewhere_goes_to_another_node() -> None:
    with anyio.fail_after(30):
        async with cluster() as c:
            for _ in range(4):
                data = echoed(await c.client.get(replay_url("elsewhere=true", at="n2"), headers=AMS))
                assert data["node"] in ("n1", "n3")
                assert data["headers"]["fly-replay-src"].startswith("instance=n2;region=ams;")


async def test_a_killed_node_is_skipped() -> None:
    with anyio.fail_after(30):
        async with cluster() as c:
            assert {echoed(await c.client.get("/echo"))["node"] for _ in range(3)} == {"n1", "n2", "n3"}
            await c.stop("n3")
            served = Counter([echoed(await c.client.get("/echo"))["node"] for _ in range(6)])
            assert set(served) == {"n1", "n2"}

            forced = await c.client.get("/echo", headers={"fly-force-instance-id": "n3"})
            assert forced.status_code == 503
            assert "could be reached" in forced.text

            # A replay to the dead node with a timeout keeps trying, then falls back to its source.
            started = time.monotonic()
            url = replay_url("instance=n3;timeout=300ms;fallback=force_self", at="n2")
            data = echoed(await c.client.get(url, headers=AMS))
            assert time.monotonic() - started >= 0.3
            assert data["node"] == "n2"
            assert "reason=timeout" in data["headers"]["fly-replay-failed"]


async def test_server_sent_events_arrive_one_by_one() -> None:
    with anyio.fail_after(30):
        async with cluster() as c:
            async with c.client.stream("GET", "/sse", headers={"fly-prefer-region": "syd"}) as response:
                assert response.status_code == 200
                lines = response.aiter_lines()
                first = await anext(line async for line in lines if line.startswith("data:"))
                assert first == "data: n3 0"
                assert not c.shared.sse_last_produced.is_set()
                rest = [line async for line in lines if line.startswith("data:")]
            assert rest == [f"data: n3 {i}" for i in range(1, 5)]


async def test_websocket_echo_through_the_edge() -> None:
    with anyio.fail_after(30):
        async with cluster() as c:
            headers = {**AMS, "cookie": "session=abc"}
            async with connect(
                c.ws_url + "/ws?x=1", additional_headers=headers, subprotocols=[Subprotocol("chat")]
            ) as ws:
                assert ws.subprotocol == "chat"
                assert ws.response is not None
                assert ws.response.headers["x-edge-node"] == "n2"
                assert ws.response.headers["x-node-ws"] == "yes"
                hello = json.loads(await ws.recv())
                assert hello["node"] == "n2"
                assert hello["headers"]["cookie"] == "session=abc"
                assert hello["headers"]["fly-region"] == "ams"
                await ws.send("hi")
                assert await ws.recv() == "n2:hi"
                await ws.send("close")
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 4001
                assert ws.close_reason == "bye"

            async with connect(c.ws_url + "/ws", additional_headers=AMS) as ws:
                await ws.recv()
                await ws.close(4002, "client done")
            await c.shared.ws_closed.wait()
            assert c.shared.ws_close_codes == [4002]


async def test_websocket_upgrade_replayed_to_the_primary() -> None:
    with anyio.fail_after(30):
        async with cluster() as c:
            async with connect(c.ws_url + "/ws-primary", additional_headers=AMS) as ws:
                assert ws.response is not None
                assert ws.response.headers["x-edge-node"] == "n1"
                assert ws.response.headers["x-edge-replays"] == "1"
                hello = json.loads(await ws.recv())
                assert hello["node"] == "n1"
                assert hello["headers"]["fly-replay-src"].startswith("instance=n2;region=ams;")
                await ws.send("write")
                assert await ws.recv() == "n1:write"

            with pytest.raises(InvalidStatus) as denied:
                await connect(c.ws_url + "/ws-deny", additional_headers=AMS)
            assert denied.value.response.status_code == 403
            assert denied.value.response.headers["x-why"] == "test"
            assert denied.value.response.body == b"go away"

            with pytest.raises(InvalidStatus) as forced:
                await connect(c.ws_url + "/ws", additional_headers={"fly-force-instance-id": "gone"})
            assert forced.value.response.status_code == 503


async def test_latency_is_added_per_region() -> None:
    with anyio.fail_after(30):
        async with cluster(latency={"syd": 0.1}) as c:
            started = time.monotonic()
            assert echoed(await c.client.get("/echo", headers={"fly-prefer-region": "syd"}))["node"] == "n3"
            assert time.monotonic() - started >= 0.1

            started = time.monotonic()
            async with connect(c.ws_url + "/ws", additional_headers={"fly-prefer-region": "syd"}) as ws:
                assert json.loads(await ws.recv())["node"] == "n3"
            assert time.monotonic() - started >= 0.1


async def test_a_body_over_the_limit_in_one_piece_is_not_replayable() -> None:
    """An ASGI server may hand the whole body over at once; the limit still applies."""
    seen: list[str] = []

    def node(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        return httpx.Response(409, headers={"fly-replay": "instance=a"})

    nodes = [EdgeNode("a", "fra", "http://a"), EdgeNode("b", "ams", "http://b")]
    with anyio.fail_after(30):
        async with httpx.AsyncClient(transport=httpx.MockTransport(node)) as to_nodes:
            edge = Edge(nodes, max_replay_body=10, client=to_nodes)
            transport = httpx.ASGITransport(app=edge)
            async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
                response = await client.post("/", content=b"x" * 11, headers={"fly-force-region": "ams"})
    assert response.status_code == 502
    assert "PA01" in response.text and "over 10 bytes" in response.text
    assert seen == ["b"]
