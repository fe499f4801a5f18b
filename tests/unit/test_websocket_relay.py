"""The one websocket relay (`forwarder.websocket_relay`) and both of its users: the middleware's relay
to the primary and the edge's relay to a node. The upstream is a real websockets server on
loopback; the client side is an in-process ASGI conversation (queues), so each end is exact."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.types import Message
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from forwarder import Forwarder, MemoryEngine, MemoryLog, Role, Topology
from forwarder.dev.edge import Edge, EdgeNode
from forwarder.middleware.websocket import relay_websocket
from forwarder.websocket_relay import RelayEnd, connect_upstream, relay, sendable_close_code

pytestmark = pytest.mark.anyio


@dataclass
class Upstream:
    """A websockets server on loopback that echoes, and obeys commands: `close <code>`, `close-empty`, `reset`."""

    url: str = ""
    received_close: list[tuple[int | None, str]] = field(default_factory=list)
    closed: anyio.Event = field(default_factory=anyio.Event)
    headers: list[tuple[str, str]] = field(default_factory=list)
    flood_sent: int = 0

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.headers = list(ws.request.headers.raw_items())
        try:
            async for data in ws:
                if data == "reset":
                    ws.transport.abort()  # the TCP connection dies without a close frame
                    return
                if data == "close-empty":
                    await _send_empty_close(ws)
                    return
                if isinstance(data, str) and data.startswith("close "):
                    await ws.close(int(data.split()[1]), "bye")
                    return
                if data == "flood":
                    for i in range(200):
                        await ws.send(f"{i:08d}".encode() * 8192)  # 64 KiB each, 12.8 MB in all
                        self.flood_sent += 1
                    continue
                await ws.send(data)
        except ConnectionClosed:
            pass
        finally:
            rcvd = ws.protocol.close_rcvd
            self.received_close.append((rcvd.code, rcvd.reason) if rcvd is not None else (None, ""))
            self.closed.set()


async def _send_empty_close(ws: ServerConnection) -> None:
    """A close frame without a status code (an empty payload), which `ws.close()` cannot send."""
    ws.transport.write(Frame(Opcode.CLOSE, b"").serialize(mask=False))
    with anyio.move_on_after(2):
        await ws.wait_closed()
    ws.transport.abort()


@asynccontextmanager
async def upstream_server() -> AsyncIterator[Upstream]:
    upstream = Upstream()
    async with serve(upstream.handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        upstream.url = f"http://127.0.0.1:{port}"
        yield upstream


@dataclass
class Client:
    """The ASGI side: what the server would deliver (`to_app`) and what the app sent (`sent`)."""

    to_app: MemoryObjectSendStream[Message]
    from_client: MemoryObjectReceiveStream[Message]
    sent: list[Message] = field(default_factory=list)
    got_text: anyio.Event = field(default_factory=anyio.Event)
    send_error: BaseException | None = None
    gate: anyio.Event | None = None

    async def receive(self) -> Message:
        return await self.from_client.receive()

    async def send(self, message: Message) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.send_error is not None and message["type"] == "websocket.send":
            raise self.send_error
        self.sent.append(message)
        if message["type"] == "websocket.send":
            self.got_text.set()

    def closes(self) -> list[Message]:
        return [m for m in self.sent if m["type"] == "websocket.close"]


def make_client() -> Client:
    to_app, from_client = anyio.create_memory_object_stream[Message](math.inf)
    return Client(to_app, from_client)


Run = Callable[[Upstream, Client], Coroutine[Any, Any, Any]]


async def run_direct(upstream: Upstream, client: Client) -> RelayEnd:
    ws = await connect_upstream(
        upstream.url.replace("http", "ws") + "/ws", headers=[], subprotocols=None, open_timeout=2
    )
    async with ws:
        await client.send({"type": "websocket.accept"})
        return await relay(client.receive, client.send, ws)


async def run_middleware(upstream: Upstream, client: Client) -> None:
    """A replica's middleware relaying the websocket to `upstream` standing in for the primary."""
    log = MemoryLog()
    forwarder = Forwarder(
        engine=MemoryEngine(log, Role.REPLICA, primary_id="node-p"),
        topology=Topology("node-r", "ams", Role.REPLICA, primary_url=upstream.url, primary_id="node-p"),
        secret="test-secret",
    )
    scope = {"type": "websocket", "path": "/ws", "raw_path": b"/ws", "query_string": b"", "headers": []}
    async with forwarder:
        await relay_websocket(forwarder, scope, client.receive, client.send)


async def run_edge(upstream: Upstream, client: Client) -> None:
    """The dev edge relaying the websocket to `upstream` standing in for a node."""
    edge = Edge([EdgeNode("n1", "fra", upstream.url)])
    scope = {
        "type": "websocket",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "headers": [(b"host", b"edge")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8080),
        "scheme": "ws",
        "subprotocols": [],
    }
    try:
        await edge(scope, client.receive, client.send)
    finally:
        await edge.aclose()


USERS = pytest.mark.parametrize("run", [run_direct, run_middleware, run_edge], ids=["relay", "middleware", "edge"])


async def _converse(run: Run, script: Callable[[Upstream, Client], Awaitable[None]]) -> tuple[Upstream, Client]:
    """Run the relay with `script` playing the client; fail on any exception or an unfinished relay."""
    client = make_client()
    with client.to_app, client.from_client:
        if run is not run_direct:  # the server's first message, before the script's own
            await client.to_app.send({"type": "websocket.connect"})
        async with upstream_server() as upstream:
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(run, upstream, client)
                    await script(upstream, client)
                await upstream.closed.wait()
    return upstream, client


async def _say(client: Client, text: str) -> None:
    client.got_text = anyio.Event()
    await client.to_app.send({"type": "websocket.receive", "text": text})
    await client.got_text.wait()


@USERS
async def test_messages_pass_both_ways_and_a_client_close_code_reaches_the_upstream(run: Run) -> None:
    async def script(upstream: Upstream, client: Client) -> None:
        await _say(client, "hello")
        await client.to_app.send({"type": "websocket.disconnect", "code": 4002, "reason": "client done"})

    upstream, client = await _converse(run, script)
    assert {"type": "websocket.send", "text": "hello"} in client.sent
    assert upstream.received_close == [(4002, "client done")]
    assert client.closes() == []  # the client closed: nothing is sent back to it


@USERS
@pytest.mark.parametrize(
    ("code", "expected"), [(1005, 1000), (None, 1000), (1006, 1001), (999, 1000), (5000, 1000), ("x", 1000)]
)
async def test_a_client_close_without_a_sendable_code_closes_the_upstream_cleanly(
    run: Run, code: object, expected: int
) -> None:
    async def script(upstream: Upstream, client: Client) -> None:
        await _say(client, "hi")
        await client.to_app.send({"type": "websocket.disconnect", "code": code})

    upstream, _ = await _converse(run, script)
    assert upstream.received_close == [(expected, "")]


@USERS
@pytest.mark.parametrize(("command", "code", "reason"), [("close 4001", 4001, "bye"), ("close-empty", 1000, "")])
async def test_an_upstream_close_reaches_the_client_with_a_sendable_code(
    run: Run, command: str, code: int, reason: str
) -> None:
    async def script(upstream: Upstream, client: Client) -> None:
        await _say(client, "hi")
        await client.to_app.send({"type": "websocket.receive", "text": command})
        while not client.closes():
            await anyio.sleep(0.01)

    _, client = await _converse(run, script)
    assert client.closes() == [{"type": "websocket.close", "code": code, "reason": reason}]


@USERS
async def test_an_upstream_reset_closes_the_client_with_1011_and_logs_no_error(
    run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    async def script(upstream: Upstream, client: Client) -> None:
        await _say(client, "hi")
        await client.to_app.send({"type": "websocket.receive", "text": "reset"})
        while not client.closes():
            await anyio.sleep(0.01)

    with caplog.at_level(logging.WARNING):
        _, client = await _converse(run, script)
    assert client.closes() == [{"type": "websocket.close", "code": 1011, "reason": ""}]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@USERS
async def test_a_client_reset_while_the_relay_writes_to_it_closes_the_upstream(run: Run) -> None:
    async def script(upstream: Upstream, client: Client) -> None:
        await _say(client, "hi")
        client.send_error = OSError("client reset")  # uvicorn raises ClientDisconnected, an OSError
        await client.to_app.send({"type": "websocket.receive", "text": "echo me"})

    upstream, client = await _converse(run, script)
    assert upstream.received_close == [(1001, "")]
    assert client.closes() == []


@USERS
async def test_a_slow_client_slows_the_upstream_instead_of_filling_a_buffer(run: Run) -> None:
    """While the client takes nothing, the upstream cannot finish sending 12.8 MB; once it reads, all arrive."""

    async def script(upstream: Upstream, client: Client) -> None:
        await _say(client, "hi")
        client.gate = anyio.Event()
        await client.to_app.send({"type": "websocket.receive", "text": "flood"})
        await anyio.sleep(1.0)
        # The relay holds one message (at the gate), websockets' queue 16 frames, the sockets their
        # buffers: the upstream is still sending. A relay that read ahead into a buffer would let it finish.
        assert upstream.flood_sent < 200
        client.gate.set()
        while len([m for m in client.sent if "bytes" in m]) < 200:
            await anyio.sleep(0.05)
        await client.to_app.send({"type": "websocket.disconnect", "code": 1000})

    _, client = await _converse(run, script)
    chunks = [m["bytes"] for m in client.sent if "bytes" in m]
    assert [chunk[:8] for chunk in chunks] == [f"{i:08d}".encode() for i in range(200)]


def test_sendable_close_codes() -> None:
    assert [sendable_close_code(c, reset=1011) for c in (1000, 1001, 1011, 1014, 3000, 4999)] == [
        1000,
        1001,
        1011,
        1014,
        3000,
        4999,
    ]
    assert [sendable_close_code(c, reset=1011) for c in (1004, 1005, 1015, 2999, 5000, None, True, "1000")] == [
        1000
    ] * 8
    assert sendable_close_code(1006, reset=1011) == 1011
    assert sendable_close_code(1006, reset=1001) == 1001
