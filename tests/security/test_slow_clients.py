"""Finding 6: slow clients cannot starve the replica's connections to the primary."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import httpx
import pytest
from starlette.types import Message

from forwarder.dev import Cluster
from forwarder.security import SecurityPolicy

from ..unit.asgi import body_of, http_scope, status_of
from .harness import nodes
from .wire import address

pytestmark = pytest.mark.anyio


async def test_a_stalled_body_is_cut_off_with_408_before_a_connection_is_taken() -> None:
    stalled = anyio.Event()  # never set
    first = True
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b"{", "more_body": True}
        await stalled.wait()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    async with nodes(security=SecurityPolicy(body_timeout=0.2)) as n:
        with anyio.fail_after(5):
            await n.replica_app(http_scope("POST", "/api/write"), receive, send)
    assert status_of(sent) == 408 and b"FORWARDER_BODY_TIMEOUT" in body_of(sent)
    assert n.nothing_happened()


async def test_streamed_uploads_are_bounded_and_buffered_requests_still_pass() -> None:
    security = SecurityPolicy(buffer_body=10, max_streamed_uploads=1, body_timeout=3.0)
    release = anyio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b"0123456789abcdef"  # past buffer_body: streamed, holding the one upload slot
        await release.wait()
        yield b"end"

    async with nodes(security=security, connect_timeout=0.3) as n, n.client(n.replica_app) as client:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                results: dict[str, int] = {}

                async def post(key: str, content: bytes | AsyncIterator[bytes]) -> None:
                    results[key] = (await client.post("/api/write", content=content)).status_code

                tg.start_soon(post, "streamed", slow_body())
                while not n.sent:  # the streamed upload has its slot and is on its way to the primary
                    await anyio.sleep(0.005)
                started = time.perf_counter()
                await post("small", b"tiny")
                small_took = time.perf_counter() - started
                await post("second large", b"x" * 100)
                release.set()
    assert results == {"small": 201, "second large": 503, "streamed": 201}
    assert small_took < 1.0
    assert sorted(w[2] for w in n.ledger.writes) == [b"0123456789abcdefend", b"tiny"]


@pytest.mark.e2e
async def test_260_stalled_uploads_do_not_block_a_legitimate_write(real_cluster: Cluster) -> None:
    replica = real_cluster.replicas[0]
    host, port = address(replica.url)
    stalled: list[anyio.abc.SocketStream] = []
    head = (
        b"POST /api/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n"
    )
    try:
        with anyio.fail_after(30):
            for _ in range(260):
                stream = await anyio.connect_tcp(host, port)
                stalled.append(stream)
                await stream.send(head)
            async with httpx.AsyncClient(timeout=5) as client:
                took = []
                for i in range(3):
                    started = time.perf_counter()
                    response = await client.post(replica.url + "/api/messages", json={"author": "ok", "text": f"{i}"})
                    took.append(time.perf_counter() - started)
                    assert response.status_code == 201, response.text
        assert max(took) < 1.0, took
    finally:
        for stream in stalled:
            await stream.aclose()


async def test_a_streamed_body_that_stalls_midway_is_cut_off_with_408() -> None:
    stalled = anyio.Event()  # never set
    chunks = [b"0123456789abcdef"]  # past buffer_body: streamed to the primary, then nothing more
    sent: list[Message] = []

    async def receive() -> Message:
        if chunks:
            return {"type": "http.request", "body": chunks.pop(), "more_body": True}
        await stalled.wait()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    async with nodes(security=SecurityPolicy(buffer_body=10, body_timeout=0.2)) as n:
        with anyio.fail_after(5):
            await n.replica_app(http_scope("POST", "/api/write"), receive, send)
    assert status_of(sent) == 408 and b"FORWARDER_BODY_TIMEOUT" in body_of(sent)
    assert len(n.sent) == 1 and not n.ledger.writes and n.ledger.log.head == 0  # it started, nothing ran
