"""Proxy mode: stream a request to the primary, wait for its txid locally, stream the answer back."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import NamedTuple

import httpx
from starlette.responses import PlainTextResponse
from starlette.types import Message, Receive, Scope, Send

from .._errors import talking_to_primary
from ..exceptions import ConfigurationError, InvalidTxid, OutcomeUnknown, PrimaryUnavailable, ReplicationTimeout
from ..logs import PerRequestLine
from ..logsafe import clean
from ..node_headers import CLIENT_HEADERS, PREFIX, end_to_end, sign_node_headers, with_forwarded_for
from ..runtime import Forwarder
from ..txid import Txid
from . import headers as h
from .body import BodyStalled, ClientDisconnected, read_forward_body, stream_rest, upload_slot
from .target import upstream_url

__all__ = ["ClientDisconnected", "forward_http", "unavailable"]

logger = logging.getLogger("forwarder.middleware")
_forwarded_line = PerRequestLine(logger)


# This node's server adds its own Date and Server; passing the primary's would duplicate them.
_NOT_PASSED_BACK = frozenset({b"date", b"server"})


def unavailable(message: str, *, status: int = 503, retry_after: int | None = 1) -> PlainTextResponse:
    headers = {"retry-after": str(retry_after)} if retry_after is not None else None
    return PlainTextResponse(message + "\n", status_code=status, headers=headers)


def _request_headers(scope: Scope, forwarder: Forwarder, reason: str) -> list[tuple[bytes, bytes]]:
    # End-to-end client headers only; the body's framing is httpx's (from what is actually sent);
    # no client header with our prefix but the read token; X-Forwarded-For appended to.
    out = [
        (k, v)
        for k, v in end_to_end(scope["headers"], also=frozenset({b"content-length"}))
        if not k.lower().startswith(PREFIX) or k.lower() in CLIENT_HEADERS
    ]
    names = {k.lower() for k, _ in out}
    client = scope.get("client")
    out = with_forwarded_for(out, client[0] if client else None)
    if b"x-forwarded-proto" not in names:
        out.append((b"x-forwarded-proto", scope.get("scheme", "http").encode()))
    host = next((v for k, v in out if k.lower() == b"host"), None)
    if host is not None and b"x-forwarded-host" not in names:
        out.append((b"x-forwarded-host", host))
    out.append((h.FORWARDED_BY, forwarder.topology.node_id.encode()))
    out.append((h.REASON, reason.encode()))
    return _signed(scope, forwarder, out)


def _signed(scope: Scope, forwarder: Forwarder, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Every `forwarder-*` header this node sends, signed (see `node_headers`)."""
    secret = forwarder.node_secret
    return sign_node_headers(secret, scope["method"], scope["path"], headers) if secret else headers


async def forward_http(
    forwarder: Forwarder,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    reason: str,
    body: bytes | None = None,
) -> None:
    """Send the request to the primary and answer with its response once this replica holds the write.

    The request body is streamed (or `body` sent when it was already read), never retried. Before
    anything reached the primary a failure is a 503 with `Retry-After`; after, a 504 saying the
    write may have run.
    """
    started = time.perf_counter()
    what = f"forwarding {clean(scope['method'])} {clean(scope['path'])}"
    async with AsyncExitStack() as stack:
        try:
            content = await _content(forwarder, receive, body, stack)
            client = forwarder.client
            base = str(client.base_url)
            url = upstream_url(base, scope)  # refuses what the target rule refuses
            headers = _request_headers(scope, forwarder, reason)
            with talking_to_primary(what, base):
                # `url` is the base plus the request's target: the target alone goes on the channel.
                target = url[len(base.rstrip("/")) :].encode("ascii")
                upstream = await _on_channel(forwarder, client, scope["method"], target, headers, content)
                if upstream is None:
                    request = client.build_request(scope["method"], url, headers=headers, content=content)
                    response = await client.send(request, stream=True)
                    raw = response.headers.raw
                    upstream = _Upstream(response.status_code, raw, response.aiter_raw(), response.aclose)
        except (BodyStalled, ClientDisconnected, ConfigurationError, PrimaryUnavailable, OutcomeUnknown) as exc:
            await _refused(exc, what, scope, receive, send)
            return
        try:
            await _answer(forwarder, upstream, what, started, reason, scope, send)
        finally:
            await upstream.close()


class _Upstream(NamedTuple):
    """The primary's answer, from httpx or straight from the node channel."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]]


async def _on_channel(
    forwarder: Forwarder,
    client: httpx.AsyncClient,
    method: str,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    content: bytes | AsyncIterator[bytes],
) -> _Upstream | None:
    """A whole body sent on the node channel itself, without httpx's request and response around it
    (that machinery cost a forwarded write about 0.5 ms on this machine's cold path); None when it
    goes over HTTP: a streamed body, no channel, or one the primary refuses."""
    channel = forwarder.channel
    if channel is None or not isinstance(content, bytes):
        return None
    answer = await channel.send_whole(client.base_url, method, target, headers, content, client.timeout.as_dict())
    if answer is None:
        return None
    status, raw, stream = answer
    return _Upstream(status, raw, stream.__aiter__(), stream.aclose)


async def _content(
    forwarder: Forwarder, receive: Receive, body: bytes | None, stack: AsyncExitStack
) -> bytes | AsyncIterator[bytes]:
    """The body to send: bytes when it fits `buffer_body` (read before a connection is taken), else
    a stream holding one of the node's upload slots (released by `stack`)."""
    if body is not None:
        return body
    security = forwarder.security
    read = await read_forward_body(receive, security.buffer_body, security.body_timeout)
    if read.complete:
        return read.prefix
    await stack.enter_async_context(upload_slot(forwarder))
    return stream_rest(read.prefix, receive, security.body_timeout)


async def _refused(exc: Exception, what: str, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer for a forward that got no response from the primary."""
    if isinstance(exc, ClientDisconnected):
        logger.info("%s: client disconnected while sending the body; not forwarded", what)
        return
    response: PlainTextResponse
    if isinstance(exc, BodyStalled):
        logger.info("%s: %s", what, exc)
        response = unavailable(str(exc), status=408, retry_after=None)
    elif isinstance(exc, ConfigurationError):
        response = unavailable(f"{what}: {exc}")
    elif isinstance(exc, OutcomeUnknown):
        logger.error("%s", exc)
        response = unavailable(str(exc), status=504, retry_after=None)
    else:
        logger.warning("%s", exc)
        response = unavailable(str(exc))
    await response(scope, receive, send)


async def _answer(
    forwarder: Forwarder, upstream: _Upstream, what: str, started: float, reason: str, scope: Scope, send: Send
) -> None:
    """Wait until this replica holds the primary's txid, then stream the primary's response back."""
    method = scope["method"]
    client = forwarder.client
    extra: list[tuple[bytes, bytes]] = [(h.FORWARDED_VIA, b"proxy")]
    raw = list(upstream.headers)
    # One pass over the raw headers: httpx's own lookup decodes every header for each one it finds.
    txid_raw = next((v for k, v in raw if k.lower() == h.TXID), None)
    txid_text = txid_raw.decode("latin-1") if txid_raw is not None else None
    answered = time.perf_counter()
    waited = 0.0
    # A copy that is restoring, or that the app wrote to, is not read from until it is whole
    # again (reads go to the primary), so there is nothing to wait for on it.
    usable = forwarder.engine.unreadable is None
    if txid_text and usable:
        wait_started = time.perf_counter()
        try:
            await forwarder.wait_for(Txid.parse(txid_text))
        except ReplicationTimeout as exc:
            logger.warning("%s: committed on the primary, but %s", what, exc)
            extra.append((h.STALE, b"1"))
        except InvalidTxid:
            logger.warning("%s: the primary sent a malformed Forwarder-Txid %s", what, clean(txid_text))
        waited = time.perf_counter() - wait_started
    # One Server-Timing header: the primary's own entries (app, commit) followed by this hop's.
    passed = end_to_end(raw, also=_NOT_PASSED_BACK)
    timings = [v for k, v in passed if k.lower() == b"server-timing"]
    timings.append(f"primary;dur={(answered - started) * 1000:.3f}, replication;dur={waited * 1000:.3f}".encode())
    extra.append((b"server-timing", b", ".join(timings)))
    start: Message = {
        "type": "http.response.start",
        "status": upstream.status,
        "headers": [(k, v) for k, v in passed if k.lower() != b"server-timing"] + extra,
    }
    await send(start)
    with talking_to_primary(what, str(client.base_url)):
        async for chunk in upstream.body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    _forwarded_line(
        "forwarded %s %s to primary %s: %d, txid %s, waited %.1f ms, total %.1f ms (%s)",
        clean(method),
        clean(scope["path"]),
        forwarder.topology.primary_id or forwarder.topology.primary_url,
        upstream.status,
        txid_text or "-",
        waited * 1000,
        (time.perf_counter() - started) * 1000,
        reason,
    )
