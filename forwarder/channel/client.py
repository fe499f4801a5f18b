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

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

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

__all__ = ["IDLE", "WINDOW", "Channel", "ChannelBroken", "Connection", "Headers", "Stream", "Websocket"]

logger = logging.getLogger("forwarder.channel")

WINDOW: Final = 256 * 1024
"""Response bytes the primary may send on one stream before the replica has read them."""

IDLE: Final = 2.0
"""Seconds without a message from the primary after which the channel is pinged before a request
goes on it (the HTTP pool's keep-alive expiry): a primary that vanished is then a `503` after the
connect timeout, as a new connection would be, not a `504` after the whole forward timeout."""

CONTROL_TIMEOUT: Final = 5.0
"""Seconds a `CREDIT` or `CANCEL` may wait for the socket to take it before the channel is dropped."""

Headers = list[tuple[bytes, bytes]]

_CLOSED: Final = Frame(Kind.RESET, 0, b"closed")  # put in every open stream's queue when the channel ends


class Connection(Protocol):
    """What the channel needs of a websocket client connection (`Websocket`; tests use an in-memory one).

    `send` raises `ConnectionClosed` once the connection is closed; iterating ends with the close.
    """

    @property
    def open(self) -> bool:
        """Open right now: a `send` would write the frame, not wait for the close and raise."""
        ...

    async def send(self, message: bytes) -> None: ...

    def __aiter__(self) -> AsyncIterator[bytes | str]: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    async def ping(self) -> Awaitable[float]: ...

    def abort(self) -> None:
        """Drop the connection at once: what is buffered is never sent."""
        ...


class Websocket:
    """A `websockets` client connection as the channel uses it."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection

    @classmethod
    async def connect(cls, url: str, headers: Headers, *, timeout: float, max_size: int) -> Websocket:
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
        return cls(connection)

    @property
    def open(self) -> bool:
        return self._connection.state is State.OPEN

    async def send(self, message: bytes) -> None:
        await self._connection.send(message)

    def __aiter__(self) -> AsyncIterator[bytes | str]:
        return aiter(self._connection)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._connection.close(code, reason)

    async def ping(self) -> Awaitable[float]:
        return await self._connection.ping()

    def abort(self) -> None:
        self._connection.transport.abort()


class ChannelBroken(Exception):
    """The channel ended, or the primary reset the stream, before the response was complete.

    `sent` is False only when the request certainly never left this node (safe to send again).
    """

    def __init__(self, reason: str, *, sent: bool = True) -> None:
        super().__init__(reason)
        self.sent = sent


class Channel:
    """One open websocket to the primary's `/_forwarder/channel`, shared by every forwarded request."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._streams: dict[int, asyncio.Queue[Frame]] = {}
        self._ids = itertools.count(1)
        self.closed_because: str | None = None
        self.last_heard = time.monotonic()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @property
    def is_open(self) -> bool:
        return self.closed_because is None

    @property
    def idle(self) -> bool:
        """Nothing heard from the primary for `IDLE` seconds."""
        return time.monotonic() - self.last_heard > IDLE

    async def alive(self, timeout: float) -> bool:
        """Whether the primary answers a ping within `timeout` seconds; if not, the channel is dropped."""
        try:
            async with asyncio.timeout(timeout):
                await (await self._connection.ping())
        except (ConnectionClosed, TimeoutError) as exc:
            reason = "it closed" if isinstance(exc, ConnectionClosed) else f"no answer in {timeout:g}s"
            self.retire(f"the primary did not answer a ping on the channel ({reason})")
            return False
        self.last_heard = time.monotonic()
        return True

    def retire(self, reason: str) -> None:
        """Take no new request; close once the requests on the channel are done.

        A primary slow to answer a ping may only be busy: what it is running still gets its
        answer (or its own timeout), as each request would on a connection of its own.
        """
        if self.closed_because is None:
            self.closed_because = reason
            logger.warning("%s; new requests go on a new channel", reason)
        if not self._streams:
            self._connection.abort()

    def abort(self, reason: str) -> None:
        """Drop the channel now (nothing buffered is sent); every open stream fails with `reason`."""
        if self.closed_because is None:
            self.closed_because = reason
            logger.warning("%s; dropping the channel", reason)
        self._connection.abort()  # the reader then ends, and fails what is still open

    async def request(self, head: RequestHead, body: bytes, timeout: float | None) -> Stream:
        """Send the request (waiting at most `timeout` seconds for room); the stream its answer comes on.

        `ChannelBroken` with `sent=False` means the request never left this node: safe to send again.
        Past `timeout` the frame may still be on its way, so the channel is dropped: `TimeoutError`.
        """
        if self.closed_because is not None or not self._connection.open:
            raise ChannelBroken(self.closed_because or "the channel is closing", sent=False)
        stream_id = next(self._ids)
        queue: asyncio.Queue[Frame] = asyncio.Queue()
        self._streams[stream_id] = queue
        try:
            # The frame is written at once; only waiting for the socket to take it can block (a
            # primary that stopped reading). That wait is bounded, and ends the channel.
            async with asyncio.timeout(timeout):
                await self._connection.send(encode_request(stream_id, head, body))
        except ConnectionClosed as exc:
            self._streams.pop(stream_id, None)
            raise ChannelBroken(f"the channel closed while the request was sent ({exc})") from None
        except TimeoutError:
            self._streams.pop(stream_id, None)
            self.abort(f"the primary took no data on the channel for {timeout:g}s")
            raise
        return Stream(self, stream_id, queue)

    async def _send_quietly(self, frame: bytes) -> None:
        """A `CREDIT` or `CANCEL`: sent if the channel is open, given up (and the channel with it)
        if the primary takes nothing for `CONTROL_TIMEOUT` seconds."""
        if self.closed_because is not None or not self._connection.open:
            return
        try:
            async with asyncio.timeout(CONTROL_TIMEOUT):
                await self._connection.send(frame)
        except ConnectionClosed:
            pass  # the reader ends every stream when the channel closes
        except TimeoutError:
            self.abort(f"the primary took no data on the channel for {CONTROL_TIMEOUT:g}s")

    def _forget(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)
        if self.closed_because is not None and not self._streams:
            self._connection.abort()  # retired, and its last request is done

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
            self.closed_because = self.closed_because or reason  # an abort's reason first
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
        queue = self._queue
        if queue.empty():
            async with asyncio.timeout(timeout):
                frame = await queue.get()
        else:
            frame = queue.get_nowait()
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
