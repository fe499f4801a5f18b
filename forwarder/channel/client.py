"""The replica's end of the node channel: one websocket to the primary, many requests on it at once.

Each request is a stream: one `REQUEST` frame out; `WHOLE`, or `START`, `BODY`... and `END`, back.
One reader task sorts the primary's frames into each stream's queue. A stream's body is let in
`WINDOW` bytes ahead of the reader (`CREDIT` frames move the window), so a slow client of one
request holds only its own response, never the channel.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Final, Protocol

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ..exceptions import ChannelProtocolError
from .frames import (
    Frame,
    Kind,
    RequestHead,
    ResponseHead,
    decode,
    decode_start,
    decode_whole,
    encode,
    encode_credit,
    encode_request,
)

__all__ = ["WINDOW", "Channel", "ChannelBroken", "Connection", "Headers", "Stream"]

logger = logging.getLogger("forwarder.channel")

WINDOW: Final = 256 * 1024
"""Response bytes the primary may send on one stream before the replica has read them."""

IDLE: Final = 2.0
"""Seconds without a message from the primary after which the channel is pinged before a request
goes on it (the HTTP pool's keep-alive expiry): a primary that vanished is then a `503` after the
connect timeout, as a new connection would be, not a `504` after the whole forward timeout."""

Headers = list[tuple[bytes, bytes]]

_CLOSED: Final = Frame(Kind.RESET, 0, b"closed")  # put in every open stream's queue when the channel ends


class Connection(Protocol):
    """What the channel needs of a websocket client connection (`websockets`' `ClientConnection`).

    `send` raises `ConnectionClosed` once the connection is closed; iterating ends with the close.
    """

    async def send(self, message: bytes) -> None: ...

    def __aiter__(self) -> AsyncIterator[bytes | str]: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    async def ping(self) -> Awaitable[float]: ...


class ChannelBroken(Exception):
    """The channel ended, or the primary reset the stream, before the response was complete."""


class Channel:
    """One open websocket to the primary's `/_forwarder/channel`, shared by every forwarded request."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._streams: dict[int, asyncio.Queue[Frame]] = {}
        self._ids = itertools.count(1)
        self.closed_because: str | None = None
        self.last_heard = time.monotonic()
        self._closing: asyncio.Task[None] | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @staticmethod
    async def connect(url: str, headers: Headers, *, timeout: float, max_size: int) -> Connection:
        """The websocket to `url` (`ws://host:port/_forwarder/channel`), opened with the signed `headers`.

        Raises what `websockets` raises: `InvalidStatus` when the primary refused the channel,
        `OSError` or `TimeoutError` when it could not be reached.
        """
        connection = await connect(
            url,
            additional_headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
            user_agent_header=None,
            open_timeout=timeout,
            max_size=max_size,
            compression=None,  # loopback or a private network: compression only costs CPU
            proxy=None,  # HTTP_PROXY is for the app's outbound traffic, not the private network
        )
        return connection

    @property
    def is_open(self) -> bool:
        return self.closed_because is None

    @property
    def idle(self) -> bool:
        """Nothing heard from the primary for `IDLE` seconds."""
        return time.monotonic() - self.last_heard > IDLE

    async def alive(self, timeout: float) -> bool:
        """Whether the primary answers a ping within `timeout` seconds; if not, the channel is closed."""
        try:
            pong = await self._connection.ping()
            await asyncio.wait_for(pong, timeout)
        except (ConnectionClosed, TimeoutError) as exc:
            reason = "it closed" if isinstance(exc, ConnectionClosed) else f"no answer in {timeout:g}s"
            self.closed_because = f"the primary did not answer a ping on the channel ({reason})"
            logger.warning("%s; opening a new one", self.closed_because)
            # Closing waits for the primary's side of the handshake, which may never come.
            self._closing = asyncio.get_running_loop().create_task(self._connection.close(1001))
            return False
        self.last_heard = time.monotonic()
        return True

    async def request(self, head: RequestHead, body: bytes) -> Stream:
        """Send the request; the stream its answer comes back on.

        `ChannelBroken` here means the request never left this node: it is safe to send it again.
        """
        if self.closed_because is not None:
            raise ChannelBroken(self.closed_because)
        stream_id = next(self._ids)
        queue: asyncio.Queue[Frame] = asyncio.Queue()
        self._streams[stream_id] = queue
        try:
            await self._connection.send(encode_request(stream_id, head, body))
        except ConnectionClosed as exc:
            # websockets refuses a send on a closed connection before writing anything.
            del self._streams[stream_id]
            raise ChannelBroken(f"the channel closed ({exc})") from None
        return Stream(self, stream_id, queue)

    async def _send_quietly(self, frame: bytes) -> None:
        try:
            await self._connection.send(frame)
        except ConnectionClosed:
            pass  # the reader ends every stream when the channel closes

    def _forget(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    async def _read(self) -> None:
        reason = "the primary closed the channel"
        close: tuple[int, str] | None = None
        try:
            async for message in self._connection:
                if isinstance(message, str):
                    raise ChannelProtocolError("the primary sent a text message on the channel")
                self.last_heard = time.monotonic()
                frame = decode(message)
                queue = self._streams.get(frame.stream)
                if queue is not None:  # else a stream this node gave up on (CANCEL sent)
                    queue.put_nowait(frame)
        except ConnectionClosed as exc:
            reason = f"the channel to the primary closed ({exc})"
        except ChannelProtocolError as exc:
            reason = f"the primary broke the channel protocol: {exc}"
            logger.warning("%s; closing the channel", reason)
            close = (1002, str(exc)[:120])
        except Exception as exc:  # a websocket error, not the app's: every stream must hear of it
            reason = f"the channel to the primary failed ({type(exc).__name__}: {exc})"
            logger.warning("%s", reason)
            close = (1011, "")
        finally:
            # Every stream hears of it first: closing waits for the primary's side of the handshake.
            self.closed_because = reason
            for queue in self._streams.values():
                queue.put_nowait(_CLOSED)
            self._streams.clear()
        if close is not None:
            await self._connection.close(*close)

    async def aclose(self) -> None:
        await self._connection.close()
        await self._reader


class Stream:
    """One request's answer on the channel: `head()` first, then `body()`; `aclose()` always."""

    def __init__(self, channel: Channel, stream_id: int, queue: asyncio.Queue[Frame]) -> None:
        self._channel = channel
        self._id = stream_id
        self._queue = queue
        self._first = b""
        self._finished = False
        self._read_since_credit = 0

    async def _next(self, timeout: float | None) -> Frame:
        frame = await asyncio.wait_for(self._queue.get(), timeout)
        if frame is _CLOSED:
            self._finished = True
            raise ChannelBroken(self._channel.closed_because or "the channel closed")
        if frame.kind is Kind.RESET:
            self._finished = True
            raise ChannelBroken("the primary broke the response off")
        return frame

    async def head(self, timeout: float | None) -> ResponseHead:
        """The response's status and headers (`TimeoutError` after `timeout` seconds)."""
        frame = await self._next(timeout)
        if frame.kind is Kind.START:
            return decode_start(frame.payload)
        if frame.kind is Kind.WHOLE:
            head, self._first = decode_whole(frame.payload)
            self._finished = True
            return head
        raise ChannelProtocolError(f"the primary answered with a {frame.kind.name} frame before the response head")

    async def body(self, timeout: float | None) -> AsyncIterator[bytes]:
        """The response body, chunk by chunk (each waited for at most `timeout` seconds)."""
        if self._finished:
            if self._first:
                yield self._first
            return
        while True:
            frame = await self._next(timeout)
            if frame.kind not in (Kind.BODY, Kind.END):
                raise ChannelProtocolError(f"the primary sent a {frame.kind.name} frame inside a response body")
            if frame.kind is Kind.END:
                self._finished = True
            else:
                self._read_since_credit += len(frame.payload)
                if self._read_since_credit >= WINDOW // 2:
                    credit, self._read_since_credit = self._read_since_credit, 0
                    await self._channel._send_quietly(encode_credit(self._id, credit))
            if frame.payload:
                yield frame.payload
            if self._finished:
                return

    async def aclose(self) -> None:
        """Done with the stream; if its answer is not all here, tell the primary to stop sending it."""
        self._channel._forget(self._id)
        if not self._finished:
            self._finished = True
            await self._channel._send_quietly(encode(Kind.CANCEL, self._id))
