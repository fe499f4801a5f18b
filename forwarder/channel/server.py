"""The primary's end of the node channel: each request on it runs through the app as if it came over HTTP.

A replica opens `/_forwarder/channel` as a websocket whose handshake it signed with the cluster
secret (`forwarder-forwarded-by` under `Forwarder-Node-Signature`, checked by the middleware's
entry checks like every node header). A handshake without a valid signature is refused with 403:
without that rule anyone who can reach the port could send requests that bypass the public
proxy's marks. Each `REQUEST` frame then becomes an ASGI HTTP request to `app` (the whole
middleware, so its entry checks and every node-header signature apply to it as they would over
HTTP), and its response goes back as frames.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final
from urllib.parse import unquote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..exceptions import ChannelProtocolError
from ..middleware.guard import refuse
from ..middleware.headers import FORWARDED_BY
from .client import WINDOW
from .frames import (
    MAX_CHUNK,
    Frame,
    Kind,
    RequestHead,
    ResponseHead,
    decode,
    decode_credit,
    decode_request,
    encode,
    encode_start,
    encode_whole,
)

__all__ = ["MAX_STREAMS", "REFUSAL", "serve_channel"]

logger = logging.getLogger("forwarder.channel")
access_logger = logging.getLogger("uvicorn.access")

MAX_STREAMS: Final = 512
"""Requests one channel may have running at once; past that a request is answered 503."""

REFUSAL: Final = "a node channel needs a handshake signed with the cluster secret"
"""How the body of a refused handshake starts (`forwarder check` tells it from any other 403)."""

_BUSY = (503, b"the primary has too many requests running on this node channel; retry shortly\n")
_FAILED = (500, b"Internal Server Error")


async def serve_channel(app: ASGIApp, scope: Scope, receive: Receive, send: Send, *, secret: bytes | None) -> None:
    """Serve one node channel (a websocket `scope` on `/_forwarder/channel`) until either end closes it."""
    signed = any(k == FORWARDED_BY for k, _ in scope["headers"])  # unsigned node headers were dropped on entry
    if not secret or not signed:
        why = (
            "this node has no FORWARDER_SECRET"
            if not secret
            else "the handshake carries no valid node signature (none, one made with another FORWARDER_SECRET, or "
            "one older than FORWARDER_SIGNATURE_MAX_AGE: check the secret and the clocks)"
        )
        logger.warning("refused a node channel from %s: %s", _peer(scope), why)
        await refuse(scope, send, 403, f"{REFUSAL}: {why}")
        return
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    logger.info("node channel opened by %s", _peer(scope))
    await _ServerChannel(app, scope, send).run(receive)


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "an unknown peer"


class _Stream:
    """The primary's state of one request on the channel."""

    __slots__ = ("done", "window", "credited")

    def __init__(self) -> None:
        self.done = asyncio.Event()  # the replica gave up (CANCEL), the channel closed, or the answer is sent
        self.window = WINDOW
        self.credited = asyncio.Event()


class _ServerChannel:
    def __init__(self, app: ASGIApp, scope: Scope, send: Send) -> None:
        self._app = app
        self._scope = scope
        self._send_message = send
        self._streams: dict[int, _Stream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = True

    async def run(self, receive: Receive) -> None:
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes")
                if data is None:
                    raise ChannelProtocolError("a text message on the node channel")
                self._handle(decode(data))
        except ChannelProtocolError as exc:
            logger.warning("closing the node channel from %s: %s", _peer(self._scope), exc)
            await self._send({"type": "websocket.close", "code": 1002, "reason": str(exc)[:120]})
        finally:
            self._open = False
            for stream in self._streams.values():
                stream.done.set()
                stream.credited.set()
            # Requests already running finish (their writes commit); only their answers are lost.
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def _handle(self, frame: Frame) -> None:
        if frame.kind is Kind.REQUEST:
            if frame.stream in self._streams:
                raise ChannelProtocolError(f"stream {frame.stream} is already running")
            stream = _Stream()
            self._streams[frame.stream] = stream
            try:
                head, body = decode_request(frame.payload)
            except ChannelProtocolError as exc:
                # The frame arrived whole and names its stream: only this request is refused.
                run = self._refuse(frame.stream, 400, f"{exc}\n".encode())
            else:
                busy = len(self._streams) > MAX_STREAMS
                run = self._refuse(frame.stream, *_BUSY) if busy else self._run(frame.stream, stream, head, body)
            task = asyncio.get_running_loop().create_task(run)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        stream_state = self._streams.get(frame.stream)
        if frame.kind is Kind.CREDIT:
            size = decode_credit(frame.payload)
            if stream_state is not None:
                stream_state.window += size
                stream_state.credited.set()
        elif frame.kind is Kind.CANCEL:
            if stream_state is not None:
                stream_state.done.set()
                stream_state.credited.set()
        else:
            raise ChannelProtocolError(f"a {frame.kind.name} frame from the replica")

    async def _send(self, message: Message) -> bool:
        if not self._open:
            return False
        try:
            await self._send_message(message)
        except Exception:  # the server's "disconnected" errors differ by websocket implementation
            self._open = False
        return self._open

    async def _frame(self, data: bytes) -> bool:
        return await self._send({"type": "websocket.send", "bytes": data})

    async def _refuse(self, stream_id: int, status: int, body: bytes) -> None:
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        if status == 503:
            headers.append((b"retry-after", b"1"))
        try:
            head = ResponseHead(status, headers)
            await self._frame(encode_whole(stream_id, head, body))
        finally:
            self._streams.pop(stream_id, None)

    def _request_scope(self, head: RequestHead) -> Scope:
        base = self._scope
        raw_path, _, query = head.target.partition(b"?")
        root: str = base.get("root_path", "")
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": base.get("asgi", {"version": "3.0"}),
            "http_version": "1.1",
            "method": head.method,
            "scheme": "https" if base.get("scheme") == "wss" else "http",
            "root_path": root,
            "path": root + unquote(raw_path.decode("ascii")),
            "raw_path": root.encode() + raw_path,
            "query_string": query,
            "headers": [(k.lower(), v) for k, v in head.headers],
            "client": base.get("client"),
            "server": base.get("server"),
        }
        if "state" in base:
            scope["state"] = dict(base["state"])
        return scope

    async def _run(self, stream_id: int, stream: _Stream, head: RequestHead, body: bytes) -> None:
        scope = self._request_scope(head)
        delivered = False
        held: ResponseHead | None = None  # the head, sent with the first body (as one frame when it is all)
        started = finished = False

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await stream.done.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal held, started, finished
            kind = message["type"]
            if kind == "http.response.start" and held is None and not started:
                held = ResponseHead(message["status"], list(message.get("headers", [])))
                return
            if kind != "http.response.body" or held is None or finished:
                return
            if stream.done.is_set():
                return  # the replica is gone: like a server whose client left, drop the rest
            chunk: bytes = message.get("body", b"")
            more = bool(message.get("more_body", False))
            if not started and not more and len(chunk) <= MAX_CHUNK:
                started = finished = True
                await self._frame(encode_whole(stream_id, held, chunk))
                return
            if not started:
                started = True
                await self._frame(encode_start(stream_id, held))
            finished = not more
            await self._body(stream_id, stream, chunk, more)

        try:
            await self._app(scope, receive, send)
        except Exception:
            logger.exception("%s %s on the node channel raised", head.method, scope["path"])
        finally:
            if not finished:
                if started:
                    await self._frame(encode(Kind.RESET, stream_id))
                else:
                    status, text = _FAILED
                    await self._frame(encode_whole(stream_id, ResponseHead(status, []), text))
                    held = ResponseHead(status, [])
            self._streams.pop(stream_id, None)
            stream.done.set()
            if held is not None:
                _log_access(scope, held.status)

    async def _body(self, stream_id: int, stream: _Stream, chunk: bytes, more: bool) -> None:
        """`chunk` in frames of at most `MAX_CHUNK`, each waiting for the replica's credit."""
        if more and not chunk:
            return
        for offset in range(0, max(len(chunk), 1), MAX_CHUNK):
            piece = chunk[offset : offset + MAX_CHUNK]
            last = offset + MAX_CHUNK >= len(chunk)
            while stream.window <= 0 and not stream.done.is_set():
                stream.credited.clear()
                await stream.credited.wait()
            if stream.done.is_set():
                return
            stream.window -= len(piece)
            await self._frame(encode(Kind.END if last and not more else Kind.BODY, stream_id, piece))


def _log_access(scope: Scope, status: int) -> None:
    # The requests on a channel never pass through the server's own access log: one line each, in
    # uvicorn's format and logger, so the primary's log still shows every request it served.
    # `--no-access-log` leaves that logger without handlers: then no record is even made.
    if access_logger.isEnabledFor(logging.INFO) and access_logger.hasHandlers():
        query = scope["query_string"]
        target = scope["path"] + ("?" + query.decode("ascii", "replace") if query else "")
        access_logger.info('%s - "%s %s HTTP/%s" %d', _peer(scope), scope["method"], target, "1.1", status)
