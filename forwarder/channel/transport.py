"""`ChannelTransport`: requests to the primary over the node channel, or over HTTP when they cannot be.

It is an httpx transport, and every failure comes out as httpx's error types: `forwarder._errors`
stays the one place they are translated. The proxy and the RPC client send a whole body through
`send_whole` themselves, skipping httpx's request and response objects around the channel (about
0.5 ms of a forwarded write on a cold path, measured); a streamed one goes through httpx to the
HTTP pool. A request goes on the channel when its body is already whole (bytes, at
most `MAX_BODY`). A primary that refuses the channel (an older forwarder, or a server without
websockets) is asked again after a minute; until then everything goes over HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Final

import httpx
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from ..exceptions import ChannelProtocolError
from ..middleware.headers import FORWARDED_BY
from ..node_headers import sign_node_headers
from .client import Channel, ChannelBroken, Connection, Headers, Stream, Websocket
from .frames import RequestHead

__all__ = [
    "CHANNEL_PATH",
    "MAX_BODY",
    "ChannelTransport",
    "channel_url",
    "refusal_text",
    "signed_handshake",
    "wire_headers",
]

logger = logging.getLogger("forwarder.channel")

CHANNEL_PATH: Final = "/_forwarder/channel"
ASK_AGAIN_AFTER: Final = 60.0
"""Seconds after a primary refused the channel before this node asks it again."""
MAX_BODY: Final = 1024 * 1024
"""Largest request body sent on the channel (the default RPC limit; uvicorn takes 16 MiB messages)."""
_MAX_MESSAGE: Final = 16 * 1024 * 1024  # a response head with every cookie still fits


def wire_headers(headers: Headers, method: str, body: bytes, netloc: bytes) -> Headers:
    """`headers` as httpx would send them with this body, so the primary sees the same request on the
    channel as over HTTP: `Host` first when there is none; `Content-Length` last for a body, or `0`
    after `Host` for an empty POST, PUT or PATCH without framing (tests/unit/test_channel_exchange.py
    holds it to httpx's own)."""
    names = {k.lower() for k, _ in headers}
    front: Headers = [] if b"host" in names else [(b"Host", netloc)]
    back: Headers = []
    if b"content-length" not in names:
        if body:
            back.append((b"Content-Length", str(len(body)).encode()))
        elif method in _SIZED and b"transfer-encoding" not in names:
            front.append((b"Content-Length", b"0"))
    return [*front, *headers, *back] if front or back else headers


_SIZED = frozenset({"POST", "PUT", "PATCH"})


def channel_url(base: httpx.URL) -> httpx.URL:
    """The channel's websocket URL on the node at `base` (`http://host:port` -> `ws://host:port/_forwarder/channel`)."""
    return base.copy_with(scheme="wss" if base.scheme == "https" else "ws", raw_path=CHANNEL_PATH.encode())


def refusal_text(exc: InvalidStatus) -> str:
    """What the primary said when it refused a handshake: the start of its body, or nothing."""
    body = exc.response.body
    return body.decode("utf-8", "replace").strip()[:200] if body else ""


def signed_handshake(secret: bytes, node_id: str) -> Headers:
    """The headers that open a channel: this node's id, signed with the cluster secret."""
    return sign_node_headers(secret, "GET", CHANNEL_PATH, [(FORWARDED_BY, node_id.encode())])


class ChannelTransport(httpx.AsyncBaseTransport):
    """Send each request whose body is whole over one websocket to the primary, the rest to `fallback`.

    `handshake()` returns the signed headers that open the channel (a node signs it with the
    cluster secret: see `forwarder.channel.server`). At most `max_streams` requests are on the
    channel at once; past that a request waits for a slot as long as httpx's pool timeout.
    `connect(url, headers, timeout)` opens the websocket (`websockets`' client; tests pass an
    in-memory one).
    """

    def __init__(
        self,
        fallback: httpx.AsyncBaseTransport,
        *,
        handshake: Callable[[], Headers],
        max_streams: int = 256,
        connect: Callable[[str, Headers, float], Awaitable[Connection]] | None = None,
    ) -> None:
        self._fallback = fallback
        self._handshake = handshake
        self._slots = asyncio.Semaphore(max_streams)
        self._opening = asyncio.Lock()
        self._channel: Channel | None = None
        self._refused_until = 0.0
        self._failed: tuple[float, httpx.TransportError] | None = None  # the last handshake that failed, and when
        self._connect = connect or _websocket
        self.refused_because: str | None = None
        """Why the primary last refused the channel (None when it never did)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        answer = None
        if isinstance(request.stream, httpx.ByteStream):
            head = RequestHead(request.method, request.url.raw_path, list(request.headers.raw))
            answer = await self.exchange(request.url, head, request.content, request.extensions.get("timeout", {}))
        if answer is None:
            return await self._fallback.handle_async_request(request)
        status, headers, body = answer
        return httpx.Response(status, headers=headers, stream=body, extensions={"http_version": b"HTTP/1.1"})

    async def send_whole(
        self,
        base: httpx.URL,
        method: str,
        target: bytes,
        headers: Headers,
        body: bytes,
        timeouts: Mapping[str, float | None],
    ) -> tuple[int, Headers, httpx.AsyncByteStream] | None:
        """`exchange` for a request the caller built itself, not httpx (the proxy's, an RPC call's):
        `target` (origin form) under `base`'s path, `headers` completed as httpx would send them."""
        head = RequestHead(
            method, base.raw_path.rstrip(b"/") + target, wire_headers(headers, method, body, base.netloc)
        )
        return await self.exchange(base, head, body, timeouts)

    async def exchange(
        self, url: httpx.URL, head: RequestHead, body: bytes, timeouts: Mapping[str, float | None]
    ) -> tuple[int, Headers, httpx.AsyncByteStream] | None:
        """Send one request on the channel without building httpx's request and response around it:
        its status, headers and body stream (errors as httpx's), or None when it must go over HTTP
        instead (a body over `MAX_BODY`, or a primary that refuses the channel).

        `head` carries every header the primary gets (`wire_headers` adds what httpx would).
        `timeouts` are httpx's (`connect`, `pool`, `write`, `read`, in seconds).
        """
        if len(body) > MAX_BODY or time.monotonic() < self._refused_until:
            return None
        channel = await self._open(url, timeouts.get("connect"))
        if channel is None:
            return None
        await self._slot(timeouts.get("pool"))
        try:
            stream = await self._send(channel, url, head, body, timeouts)
        except BaseException:
            self._slots.release()
            raise
        read_timeout = timeouts.get("read")
        try:
            answer = await stream.head(read_timeout)
        except BaseException as exc:
            await stream.aclose()
            self._slots.release()
            translated = _translated(exc, "waiting for the response")
            if translated is exc:
                raise  # cancelled, or not a channel failure
            raise translated from exc
        return answer.status, answer.headers, _Body(stream, read_timeout, self._slots.release)

    async def _slot(self, timeout: float | None) -> None:
        if not self._slots.locked():
            await self._slots.acquire()
            return
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout)
        except TimeoutError:
            raise httpx.PoolTimeout("every slot on the node channel stayed busy") from None

    async def _send(
        self, channel: Channel, url: httpx.URL, head: RequestHead, body: bytes, timeouts: Mapping[str, float | None]
    ) -> Stream:
        for attempt in (1, 2):
            try:
                return await channel.request(head, body, timeouts.get("write"))
            except ChannelBroken as exc:
                if exc.sent:
                    raise httpx.WriteError(f"the node channel broke while the request was sent ({exc})") from None
                if attempt == 2:
                    raise httpx.ConnectError(f"the node channel closed before the request was sent ({exc})") from None
            except TimeoutError:
                raise httpx.WriteTimeout("the primary took no data on the node channel in time") from None
            # It closed before the request left: nothing ran, so one fresh channel may carry it.
            fresh = await self._open(url, timeouts.get("connect"))
            if fresh is None:
                raise httpx.ConnectError("the node channel closed and the primary refuses a new one")
            channel = fresh
        raise AssertionError("unreachable")

    async def _open(self, url: httpx.URL, timeout: float | None) -> Channel | None:
        channel = self._channel
        if channel is not None and channel.is_open and not channel.idle:
            return channel
        asked = time.monotonic()
        async with self._opening:  # one ping or one handshake at a time; the others then use its channel
            channel = self._channel
            if channel is not None and channel.is_open:
                if not channel.idle or await channel.alive(timeout or 10.0):
                    return channel
            if time.monotonic() < self._refused_until:
                return None
            failed = self._failed
            if failed is not None and failed[0] >= asked:
                # Tried and failed while this request waited its turn: it fails the same way now,
                # as it would have beside it on a connection of its own, not one connect timeout later.
                raise type(failed[1])(str(failed[1]))
            target = channel_url(url)
            try:
                self._channel = Channel(await self._connect(str(target), self._handshake(), timeout or 10.0))
            except InvalidStatus as exc:
                self._refuse(target, exc)
                return None
            except TimeoutError as exc:
                late = httpx.ConnectTimeout(f"opening the node channel to {target}: no handshake in time")
                raise self._failure(late) from exc
            except (OSError, InvalidHandshake, InvalidURI) as exc:
                raise self._failure(httpx.ConnectError(f"opening the node channel to {target}: {exc}")) from exc
            self._failed = None
            return self._channel

    def _failure(self, exc: httpx.TransportError) -> httpx.TransportError:
        self._failed = (time.monotonic(), exc)
        return exc

    def _refuse(self, target: httpx.URL, exc: InvalidStatus) -> None:
        body = refusal_text(exc)
        self.refused_because = f"HTTP {exc.response.status_code}" + (f": {body}" if body else "")
        self._refused_until = time.monotonic() + ASK_AGAIN_AFTER
        logger.warning(
            "the primary at %s refused the node channel (%s); forwarding over HTTP, asking again in %.0f s. "
            "Run the same forwarder version and FORWARDER_SECRET on every node, and uvicorn with websockets "
            "(uvicorn[standard]), or set FORWARDER_NODE_CHANNEL=false",
            target,
            self.refused_because,
            ASK_AGAIN_AFTER,
        )

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._channel.aclose()
        await self._fallback.aclose()


async def _websocket(url: str, headers: Headers, timeout: float) -> Connection:
    return await Websocket.connect(url, headers, timeout=timeout, max_size=_MAX_MESSAGE)


class _Body(httpx.AsyncByteStream):
    """A response body arriving on the channel, its errors as httpx's."""

    def __init__(self, stream: Stream, timeout: float | None, release: Callable[[], None]) -> None:
        self._stream = stream
        self._timeout = timeout
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream.body(self._timeout):
                yield chunk
        except (ChannelBroken, ChannelProtocolError, TimeoutError) as exc:
            raise _translated(exc, "reading the response body") from exc

    async def aclose(self) -> None:
        await self._stream.aclose()
        release = self._release
        self._release = None
        if release is not None:
            release()


def _translated(exc: BaseException, doing: str) -> BaseException:
    """httpx's error for a failure on the channel after the request left (the outcome is unknown)."""
    if isinstance(exc, TimeoutError):
        return httpx.ReadTimeout(f"the primary did not answer on the node channel in time ({doing})")
    if isinstance(exc, ChannelBroken | ChannelProtocolError):
        return httpx.RemoteProtocolError(f"the node channel broke while {doing}: {exc}")
    return exc
