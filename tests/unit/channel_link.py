"""An in-memory websocket between a replica's `Channel` and an ASGI app serving `/_forwarder/channel`.

The client end behaves like `websockets`' `ClientConnection` where the channel relies on it: `send`
raises `ConnectionClosed` once closed, iterating ends at the close. The server end is the ASGI
websocket protocol: `websocket.connect`, then each message as `websocket.receive`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message
from websockets.datastructures import Headers as WSHeaders
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.frames import Close
from websockets.http11 import Response

from forwarder.channel.client import Headers

_END = object()


@dataclass
class Refusal:
    status: int
    body: bytes


@dataclass
class MemoryLink:
    """One websocket: `client` for the replica's channel, the app's task for the primary's end."""

    app: ASGIApp
    handshake: Headers
    client_addr: tuple[str, int] = ("10.0.0.2", 40000)
    to_server: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)
    to_client: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    sent_by_client: list[bytes] = field(default_factory=list)
    sent_by_server: list[bytes] = field(default_factory=list)
    close_code: int | None = None
    closed: bool = False
    frozen: bool = False
    """The far end stopped (SIGSTOP): pings go unanswered."""
    full: bool = False
    """The far end stopped reading and the socket is full: a send waits (until the link closes)."""
    break_after_write: bool = False
    """The next send writes its frame, then the connection breaks (websockets raises after writing)."""
    task: asyncio.Task[None] | None = None

    def scope(self) -> dict[str, Any]:
        return {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "scheme": "ws",
            "path": "/_forwarder/channel",
            "raw_path": b"/_forwarder/channel",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"primary"), *((k.lower(), v) for k, v in self.handshake)],
            "client": self.client_addr,
            "server": ("primary", 80),
            "subprotocols": [],
            "state": {"from_lifespan": True},
            "extensions": {"websocket.http.response": {}},
        }

    async def connect(self) -> MemoryLink:
        """Run the handshake: the link when the app accepted, else `InvalidStatus` as websockets raises it."""
        accepted: asyncio.Future[Refusal | None] = asyncio.get_running_loop().create_future()
        refusal: list[Any] = []

        async def receive() -> Message:
            if not accepted.done():
                return {"type": "websocket.connect"}
            return await self.to_server.get()

        async def send(message: Message) -> None:
            kind = message["type"]
            if kind == "websocket.accept":
                accepted.set_result(None)
            elif kind == "websocket.http.response.start":
                refusal.append(message["status"])
            elif kind == "websocket.http.response.body":
                if not accepted.done():
                    accepted.set_result(Refusal(refusal[0], message.get("body", b"")))
            elif kind == "websocket.send":
                if self.closed:
                    raise OSError("the link is closed")
                self.sent_by_server.append(message["bytes"])
                self.to_client.put_nowait(message["bytes"])
            elif kind == "websocket.close":
                if not accepted.done():
                    accepted.set_result(Refusal(403, message.get("reason", "").encode()))
                self._close(message.get("code", 1000))

        async def run() -> None:
            try:
                await self.app(self.scope(), receive, send)
            finally:
                if not accepted.done():
                    accepted.set_result(Refusal(500, b"the app returned"))
                self._close(1006)

        self.task = asyncio.get_running_loop().create_task(run())
        refused = await accepted
        if refused is not None:
            raise InvalidStatus(Response(refused.status, "Refused", WSHeaders(), refused.body))
        return self

    def _close(self, code: int) -> None:
        if not self.closed:
            self.closed = True
            self.close_code = code
            self.to_client.put_nowait(_END)
            self.to_server.put_nowait({"type": "websocket.disconnect", "code": code})

    # -- the client end (what `Channel` calls) --

    @property
    def open(self) -> bool:
        return not self.closed

    def abort(self) -> None:
        self._close(1006)

    async def send(self, message: bytes) -> None:
        if self.closed:
            raise ConnectionClosedError(Close(self.close_code or 1006, ""), None)
        self.sent_by_client.append(message)
        self.to_server.put_nowait({"type": "websocket.receive", "bytes": message})
        if self.break_after_write:
            self._close(1006)
            raise ConnectionClosedError(Close(1006, ""), None)
        while self.full and not self.closed:
            await asyncio.sleep(0.01)

    def __aiter__(self) -> AsyncIterator[bytes | str]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[bytes | str]:
        while True:
            item = await self.to_client.get()
            if item is _END:
                if self.close_code not in (1000, None):
                    raise ConnectionClosedError(Close(self.close_code or 1006, ""), None)
                return
            yield item

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self._close(code)
        if self.task is not None:
            await asyncio.wait({self.task}, timeout=5)

    async def ping(self) -> asyncio.Future[float]:
        if self.closed:
            raise ConnectionClosedError(Close(self.close_code or 1006, ""), None)
        pong: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if not self.frozen:
            pong.set_result(0.0)
        return pong

    def server_sends(self, message: bytes | str) -> None:
        """Put a message on the way to the client as if the primary had sent it."""
        self.to_client.put_nowait(message)
