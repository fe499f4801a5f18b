"""The node channel in-process: a replica's `ChannelTransport` and the primary's `serve_channel`
(through the whole middleware) over in-memory websockets (`channel_link.MemoryLink`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from websockets.exceptions import InvalidStatus

from forwarder.channel import server
from forwarder.channel.client import WINDOW, Connection, Headers
from forwarder.channel.frames import (
    MAX_CHUNK,
    Kind,
    RequestHead,
    decode,
    decode_request,
    decode_whole,
    encode,
    encode_request,
)
from forwarder.channel.transport import CHANNEL_PATH, ChannelTransport, signed_handshake
from forwarder.node_headers import sign_node_headers

from .channel_link import MemoryLink
from .nodes import SECRET, Nodes, two_nodes

pytestmark = pytest.mark.anyio

SIGNED = signed_handshake(SECRET.encode(), "node-r")


def app(ref: list[Nodes], seen: list[Scope]) -> Starlette:
    async def write(request: Request) -> Response:
        seen.append(dict(request.scope))
        ref[0].log.commit()
        return JSONResponse({"body": (await request.body()).decode(), "query": str(request.query_params)}, 201)

    async def stream(request: Request) -> Response:
        size = int(request.query_params["size"])

        async def chunks() -> AsyncIterator[bytes]:
            for offset in range(0, size, 16 * 1024):
                yield bytes([offset // 16384 % 251]) * min(16 * 1024, size - offset)

        return StreamingResponse(chunks(), status_code=201)

    async def fail(request: Request) -> Response:
        raise RuntimeError("the app failed")

    return Starlette(
        routes=[
            Route("/things/{name}", write, methods=["POST"]),
            Route("/stream", stream, methods=["POST"]),
            Route("/fail", fail, methods=["POST"]),
        ]
    )


def kinds(messages: list[bytes]) -> list[Kind]:
    return [decode(m).kind for m in messages]


async def test_forwarded_writes_and_rpc_calls_share_one_channel_and_the_primary_app_sees_the_request() -> None:
    ref: list[Nodes] = []
    seen: list[Scope] = []
    async with two_nodes(lambda: app(ref, seen), channel=True) as nodes:
        ref.append(nodes)
        async with nodes.client(nodes.replica_app) as client:
            for i in range(5):
                task = asyncio.create_task(client.post(f"/things/caf%C3%A9?n={i}", content=f"body {i}"))
                with anyio.fail_after(5):
                    while nodes.log.head <= i:
                        await asyncio.sleep(0.001)
                    nodes.replica_engine.apply()
                    response = await task
                assert response.status_code == 201, response.text
                assert response.json() == {"body": f"body {i}", "query": f"n={i}"}
                assert response.headers["forwarder-forwarded"] == "proxy"
        (link,) = nodes.links
        assert kinds(link.sent_by_client) == [Kind.REQUEST] * 5
        assert kinds(link.sent_by_server) == [Kind.WHOLE] * 5
    scope = seen[0]
    assert scope["path"] == "/things/café" and scope["raw_path"] == b"/things/caf%C3%A9"
    assert scope["query_string"] == b"n=0" and scope["method"] == "POST" and scope["scheme"] == "http"
    assert scope["client"] == ("10.0.0.2", 40000), "the primary sees the replica as the peer, as over HTTP"
    assert scope["state"] == {"from_lifespan": True}
    headers = dict(scope["headers"])
    assert headers[b"forwarder-forwarded-by"] == b"node-r", "the replica's signed node headers arrive and check out"
    assert all(k == k.lower() for k, _ in scope["headers"])


@pytest.mark.parametrize(
    "handshake, cause",
    [
        ([], "no valid node signature"),
        (signed_handshake(b"not-the-secret", "node-r"), "no valid node signature"),
        (sign_node_headers(SECRET.encode(), "GET", "/elsewhere", [(b"forwarder-forwarded-by", b"r")]), "no valid"),
        (sign_node_headers(SECRET.encode(), "GET", CHANNEL_PATH, [(b"forwarder-forwarded-by", b"r")], now=1), "no"),
    ],
    ids=["unsigned", "forged", "other path", "stale"],
)
async def test_a_handshake_no_node_signed_is_refused_with_403_naming_the_cause(handshake: Headers, cause: str) -> None:
    async with two_nodes(Starlette) as nodes:
        with pytest.raises(InvalidStatus) as refused:
            await MemoryLink(nodes.primary_app, handshake).connect()
    assert refused.value.response.status_code == 403
    assert cause in refused.value.response.body.decode()
    assert "signed with the cluster secret" in refused.value.response.body.decode()


async def test_a_node_without_a_secret_refuses_every_channel() -> None:
    from forwarder import Forwarder, ForwarderMiddleware, MemoryEngine, MemoryLog, Role, Topology

    primary = Forwarder(engine=MemoryEngine(MemoryLog(), Role.PRIMARY), topology=Topology("p", "fra", Role.PRIMARY))
    async with primary:
        with pytest.raises(InvalidStatus) as refused:
            await MemoryLink(ForwarderMiddleware(Starlette(), forwarder=primary), SIGNED).connect()
    assert refused.value.response.status_code == 403
    assert b"no FORWARDER_SECRET" in refused.value.response.body


async def opened(nodes: Nodes) -> MemoryLink:
    return await MemoryLink(nodes.primary_app, signed_handshake(SECRET.encode(), "node-r")).connect()


async def answer(link: MemoryLink) -> list[bytes]:
    """Every message the primary sends until it closes the link."""
    out = []
    with anyio.fail_after(5):
        async for message in link:
            assert isinstance(message, bytes)
            out.append(message)
    return out


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x01\x00",
        b"\x63\x00\x00\x00\x01",
        encode(Kind.START, 1, b"{}"),
        b"text, not binary",
    ],
    ids=["short", "unknown kind", "a primary's kind", "text"],
)
async def test_a_frame_that_is_not_one_closes_the_channel_with_1002(garbage: bytes) -> None:
    async with two_nodes(Starlette) as nodes:
        link = await opened(nodes)
        if garbage.startswith(b"text"):
            link.to_server.put_nowait({"type": "websocket.receive", "text": garbage.decode()})
        else:
            await link.send(garbage)
        with pytest.raises(Exception, match="1002"):
            await answer(link)
        assert link.close_code == 1002


async def test_a_stream_id_already_running_closes_the_channel() -> None:
    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(10)

    async with two_nodes(lambda: slow) as nodes:
        link = await opened(nodes)
        request = encode_request(7, RequestHead("GET", b"/x", [(b"host", b"p")]), b"")
        await link.send(request)
        await link.send(request)
        with anyio.fail_after(5):
            while link.close_code is None:
                await asyncio.sleep(0.001)
        assert link.close_code == 1002
        assert link.task is not None
        link.task.cancel()


@pytest.mark.parametrize(
    "head",
    [
        RequestHead("GET", b"/x", [(b"host", b"p"), (b"x-evil", b"a\r\nset-cookie: b=1")]),
        RequestHead("GET", b"/x", [(b"host", b"p"), (b"bad name", b"v")]),
        RequestHead("GET", b"/x", [(b"host", b"p"), (b"x", b"nul\x00")]),
        RequestHead("GET", b"http://elsewhere/x", [(b"host", b"p")]),
        RequestHead("G T", b"/x", [(b"host", b"p")]),
    ],
    ids=["CRLF in a value", "space in a name", "NUL", "absolute target", "space in the method"],
)
async def test_a_request_http_would_refuse_gets_400_alone_and_the_channel_serves_on(head: RequestHead) -> None:
    async def ok(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await PlainTextResponse(scope["method"])(scope, receive, send)

    async with two_nodes(lambda: ok) as nodes:
        link = await opened(nodes)
        await link.send(encode_request(1, head, b""))
        await link.send(encode_request(2, RequestHead("M-SEARCH", b"/y", [(b"host", b"p")]), b""))
        with anyio.fail_after(5):
            answers = {(f := decode(await link.to_client.get())).stream: decode_whole(f.payload) for _ in range(2)}
        assert answers[1][0].status == 400 and b" is not " in answers[1][1], "the answer says what was wrong"
        assert answers[2][0].status == 200 and answers[2][1] == b"M-SEARCH", "any token is a method"
        assert not link.closed
        await link.close()


async def test_a_long_response_is_sent_only_as_fast_as_the_replica_reads_it() -> None:
    ref: list[Nodes] = []
    size = 8 * WINDOW
    async with two_nodes(lambda: app(ref, []), channel=True) as nodes:
        ref.append(nodes)
        request = nodes.replica.client.build_request("POST", "/stream", params={"size": size}, content=b"")
        with anyio.fail_after(10):
            response = await nodes.replica.client.send(request, stream=True)
            (link,) = nodes.links
            await asyncio.sleep(0.1)  # the primary has had every chance to run ahead
            sent = sum(len(decode(m).payload) for m in link.sent_by_server[1:])
            assert sent <= WINDOW + MAX_CHUNK, f"{sent} bytes sent before the replica read any"
            body = b"".join([chunk async for chunk in response.aiter_raw()])
            await response.aclose()
    assert len(body) == size
    assert body[16384 * 5 : 16384 * 5 + 3] == b"\x05\x05\x05"
    credits = [decode(m) for m in link.sent_by_client if decode(m).kind is Kind.CREDIT]
    assert credits, "the replica moved the window as it read"


async def test_a_replica_that_stops_reading_is_heard_by_the_app_as_a_disconnect() -> None:
    heard: list[Message] = []

    async def waits(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        heard.append(await receive())

    async with two_nodes(lambda: waits, channel=True) as nodes:
        request = nodes.replica.client.build_request("POST", "/things/x", content=b"")
        with anyio.fail_after(5):
            response = await nodes.replica.client.send(request, stream=True)
            async for chunk in response.aiter_raw():
                assert chunk == b"first"
                break
            await response.aclose()
            while not heard:
                await asyncio.sleep(0.001)
        (link,) = nodes.links
        assert Kind.CANCEL in kinds(link.sent_by_client)
    assert heard == [{"type": "http.disconnect"}]


async def test_an_app_that_raises_answers_500_and_one_that_breaks_off_resets_the_stream() -> None:
    async def breaks(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("broke off")

    ref: list[Nodes] = []
    async with two_nodes(lambda: app(ref, []), channel=True) as nodes:
        ref.append(nodes)
        failed = await nodes.replica.client.post("/fail", content=b"")
        assert failed.status_code == 500
    async with two_nodes(lambda: breaks, channel=True) as nodes:
        with pytest.raises(httpx.RemoteProtocolError, match="broke the response off"):
            await nodes.replica.client.post("/things/x", content=b"")


async def test_past_the_stream_limit_a_request_is_answered_503(monkeypatch: pytest.MonkeyPatch) -> None:
    release = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await release.wait()
            await PlainTextResponse("done")(scope, receive, send)

    monkeypatch.setattr(server, "MAX_STREAMS", 2)
    async with two_nodes(lambda: slow) as nodes:
        link = await opened(nodes)
        for stream in (1, 2, 3):
            await link.send(encode_request(stream, RequestHead("GET", b"/x", [(b"host", b"p")]), b""))
        with anyio.fail_after(5):
            first = decode(await link.to_client.get())
        assert first.stream == 3 and first.kind is Kind.WHOLE
        assert b'"s":503' in first.payload and b"too many requests" in first.payload
        release.set()
        with anyio.fail_after(5):
            rest = {decode(await link.to_client.get()).stream for _ in range(2)}
        assert rest == {1, 2}
        await link.close()


async def test_a_primary_that_refuses_the_channel_is_reached_over_http_and_asked_again_only_later() -> None:
    opened_at: list[float] = []

    async def refuse(url: str, headers: Headers, timeout: float) -> Connection:
        opened_at.append(time.monotonic())
        from websockets.datastructures import Headers as WSHeaders
        from websockets.http11 import Response as WSResponse

        raise InvalidStatus(WSResponse(404, "Not Found", WSHeaders(), b"Not Found"))

    def over_http(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json={"over": "http"})

    transport = ChannelTransport(httpx.MockTransport(over_http), handshake=lambda: SIGNED, connect=refuse)
    async with httpx.AsyncClient(transport=transport, base_url="http://primary") as client:
        for _ in range(3):
            response = await client.post("/things", content=b"x")
            assert response.json() == {"over": "http"}
    assert len(opened_at) == 1, "asked once, then HTTP until ASK_AGAIN_AFTER"
    assert transport.refused_because == "HTTP 404: Not Found"


async def test_a_primary_that_cannot_be_reached_is_a_connect_error_and_a_streamed_body_takes_http() -> None:
    async def unreachable(url: str, headers: Headers, timeout: float) -> Connection:
        raise ConnectionRefusedError(111, "Connection refused")

    def over_http(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json={"size": len(request.read())})

    transport = ChannelTransport(httpx.MockTransport(over_http), handshake=lambda: SIGNED, connect=unreachable)
    async with httpx.AsyncClient(transport=transport, base_url="http://primary") as client:
        with pytest.raises(httpx.ConnectError, match="Connection refused"):
            await client.post("/things", content=b"x")

        async def body() -> AsyncIterator[bytes]:
            yield b"a" * 1000
            yield b"b" * 1000

        streamed = await client.post("/upload", content=body())
    assert streamed.json() == {"size": 2000}


async def test_a_channel_that_closed_before_the_request_left_is_opened_again_once() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: app(ref, []), channel=True) as nodes:
        ref.append(nodes)
        task = asyncio.create_task(nodes.replica.client.post("/things/a", content=b"1"))
        with anyio.fail_after(5):
            while nodes.log.head < 1:
                await asyncio.sleep(0.001)
            nodes.replica_engine.apply()
            assert (await task).status_code == 201
            await nodes.links[0].close()
            task = asyncio.create_task(nodes.replica.client.post("/things/b", content=b"2"))
            while nodes.log.head < 2:
                await asyncio.sleep(0.001)
            nodes.replica_engine.apply()
            assert (await task).status_code == 201
        assert len(nodes.links) == 2


def hanging(started: asyncio.Event) -> ASGIApp:
    """An app whose requests never finish (the primary is busy, or about to die); `started` once one runs."""

    async def hangs(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            started.set()
            await asyncio.sleep(10)

    return hangs


async def test_a_channel_that_breaks_mid_request_is_a_504_that_says_the_write_may_have_run() -> None:
    started = asyncio.Event()
    hangs = hanging(started)

    async with two_nodes(lambda: hangs, channel=True) as nodes:
        async with nodes.client(nodes.replica_app) as client:
            task = asyncio.create_task(client.post("/things", content=b"x"))
            with anyio.fail_after(5):
                await started.wait()
                nodes.links[0]._close(1006)  # the primary's process died
                response = await task
            assert nodes.links[0].task is not None
            nodes.links[0].task.cancel()
    assert response.status_code == 504
    assert "may have been executed" in response.text


async def test_a_primary_that_sends_garbage_fails_every_open_stream_and_is_closed_with_1002() -> None:
    started = asyncio.Event()
    hangs = hanging(started)

    async with two_nodes(lambda: hangs, channel=True) as nodes:
        task = asyncio.create_task(nodes.replica.client.post("/things", content=b"x"))
        with anyio.fail_after(5):
            await started.wait()
            nodes.links[0].server_sends(b"\x09garbage")
            with pytest.raises(httpx.RemoteProtocolError, match="broke the channel protocol"):
                await task
        assert nodes.links[0].close_code == 1002
        assert nodes.links[0].task is not None
        nodes.links[0].task.cancel()


async def test_each_request_on_the_channel_gets_an_access_log_line_in_uvicorns_format(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: app(ref, []), channel=True) as nodes:
        ref.append(nodes)
        with caplog.at_level("INFO", logger="uvicorn.access"):
            response = await nodes.replica.client.post("/things/x?a=1", content=b"")
    assert response.status_code == 201
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert lines == ['10.0.0.2:40000 - "POST /things/x?a=1 HTTP/1.1" 201']


async def test_after_a_quiet_spell_a_channel_whose_primary_does_not_answer_a_ping_is_replaced() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: app(ref, []), channel=True) as nodes:
        ref.append(nodes)
        nodes.replica_engine.apply()
        with anyio.fail_after(5):
            task = asyncio.create_task(nodes.replica.client.post("/things/a", content=b""))
            while nodes.log.head < 1:
                await asyncio.sleep(0.001)
            nodes.replica_engine.apply()
            assert (await task).status_code == 201
        transport = nodes.replica.client._transport
        assert isinstance(transport, ChannelTransport) and transport._channel is not None
        transport._channel.last_heard -= 60  # quiet for a minute
        nodes.links[0].frozen = True  # and the primary at its end stopped
        with anyio.fail_after(5):
            task = asyncio.create_task(nodes.replica.client.post("/things/b", content=b"", timeout=1))
            while nodes.log.head < 2:
                await asyncio.sleep(0.001)
            nodes.replica_engine.apply()
            assert (await task).status_code == 201
        assert len(nodes.links) == 2, "a new channel carried the request; nothing went on the silent one"
        assert not any(decode(m).kind is Kind.REQUEST for m in nodes.links[0].sent_by_client[1:])
        nodes.links[0].frozen = False


async def test_a_request_the_primary_takes_no_data_for_is_a_504_within_the_write_timeout_and_ends_the_channel() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: app(ref, []), channel=True) as nodes:
        ref.append(nodes)
        nodes.replica.forward_timeout = 0.5  # the write timeout of forwarded requests
        nodes.replica._client = None
        async with nodes.client(nodes.replica_app) as client:
            warm = asyncio.create_task(client.post("/things/a", content=b""))
            with anyio.fail_after(5):
                while nodes.log.head < 1:
                    await asyncio.sleep(0.001)
                nodes.replica_engine.apply()
                assert (await warm).status_code == 201
                nodes.links[0].full = True
                started = time.monotonic()
                response = await client.post("/things/b", content=b"")
        assert response.status_code == 504 and "did not answer in time" in response.text
        assert time.monotonic() - started < 2
        assert nodes.links[0].closed, "a channel the primary takes nothing from is dropped"


async def test_a_request_whose_send_broke_after_writing_is_never_sent_again() -> None:
    async def runs(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await asyncio.sleep(10)

    async with two_nodes(lambda: runs, channel=True) as nodes:
        async with nodes.client(nodes.replica_app) as client:
            transport = nodes.replica.client._transport
            assert isinstance(transport, ChannelTransport)
            with anyio.fail_after(5):
                await nodes.replica.client.get("/_forwarder/health")  # the channel is open
                nodes.links[0].break_after_write = True
                response = await client.post("/things", content=b"x")
        assert response.status_code == 504 and "may have been executed" in response.text
        targets = [
            decode_request(decode(m).payload)[0].target
            for link in nodes.links
            for m in link.sent_by_client
            if decode(m).kind is Kind.REQUEST
        ]
        assert targets.count(b"/things") == 1, "it may have run: sent once, never again on a new channel"
        for link in nodes.links:
            if link.task is not None:
                link.task.cancel()


async def test_requests_waiting_on_a_handshake_that_times_out_fail_with_it_not_one_timeout_after_another() -> None:
    attempts: list[float] = []

    async def silent(url: str, headers: Headers, timeout: float) -> Connection:
        attempts.append(time.monotonic())
        await asyncio.sleep(timeout)  # a frozen primary: the handshake never gets an answer
        raise TimeoutError

    def unused(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing goes over HTTP")

    transport = ChannelTransport(httpx.MockTransport(unused), handshake=lambda: SIGNED, connect=silent)
    timeout = httpx.Timeout(5, connect=0.3)
    async with httpx.AsyncClient(transport=transport, base_url="http://primary", timeout=timeout) as client:
        started = time.monotonic()
        with anyio.fail_after(5):
            outcomes = await asyncio.gather(
                *(client.post("/w", content=b"x") for _ in range(5)), return_exceptions=True
            )
        elapsed = time.monotonic() - started
    assert all(isinstance(o, httpx.ConnectTimeout) for o in outcomes), outcomes
    assert len(attempts) == 1 and elapsed < 1.0, (len(attempts), elapsed)


async def test_a_request_running_when_a_ping_goes_unanswered_still_gets_its_answer_on_the_old_channel() -> None:
    # A primary slow to answer a ping may only be busy: the channel takes no new request, but what
    # runs on it is answered there, and the channel closes once that is done.
    release = asyncio.Event()
    ref: list[Nodes] = []

    async def slow_then_quick(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            await release.wait()
        ref[0].log.commit()
        ref[0].replica_engine.apply()
        await PlainTextResponse(scope["path"], status_code=201)(scope, receive, send)

    async with two_nodes(lambda: slow_then_quick, channel=True) as nodes:
        ref.append(nodes)
        client = nodes.replica.client
        transport = client._transport
        assert isinstance(transport, ChannelTransport)
        with anyio.fail_after(5):
            slow = asyncio.create_task(client.post("/slow", content=b"", timeout=httpx.Timeout(5, connect=0.3)))
            while not nodes.links or not nodes.links[0].sent_by_client:
                await asyncio.sleep(0.001)
            assert transport._channel is not None
            transport._channel.last_heard -= 60
            nodes.links[0].frozen = True  # pings go unanswered
            quick = await client.post("/quick", content=b"", timeout=httpx.Timeout(5, connect=0.3))
            assert quick.status_code == 201 and len(nodes.links) == 2, "the new request went on a new channel"
            assert not nodes.links[0].closed, "the old one still carries the request running on it"
            release.set()
            answer = await slow
        assert (answer.status_code, answer.text) == (201, "/slow")
        assert nodes.links[0].closed, "closed once its last request was done"
