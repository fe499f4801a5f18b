"""Websockets that must live on the primary: relayed there (proxy mode) or refused with fly-replay."""

from __future__ import annotations

import logging

import anyio
from starlette.types import Message, Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ..logsafe import clean
from ..node_headers import CLIENT_HEADERS, PREFIX, end_to_end, sign_node_headers, with_forwarded_for
from ..runtime import Forwarder
from . import headers as h
from .target import upstream_url

__all__ = ["deny_websocket", "relay_websocket", "supports_denial"]

logger = logging.getLogger("forwarder.middleware")

_NOT_RELAYED = h.HOP_BY_HOP | {
    b"host",
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
    b"sec-websocket-accept",
}


def supports_denial(scope: Scope) -> bool:
    """Whether the server can answer a websocket handshake with a plain HTTP response."""
    return "websocket.http.response" in scope.get("extensions", {})


async def deny_websocket(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> None:
    """Answer the handshake with an HTTP response instead of `101` (the ASGI denial extension)."""
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body, "more_body": False})


def _upstream_headers(forwarder: Forwarder, scope: Scope) -> list[tuple[str, str]]:
    out = [
        (k, v)
        for k, v in end_to_end(scope["headers"], also=_NOT_RELAYED)
        if not k.lower().startswith(PREFIX) or k.lower() in CLIENT_HEADERS
    ]
    client = scope.get("client")
    out = with_forwarded_for(out, client[0] if client else None)
    out.append((h.FORWARDED_BY, forwarder.topology.node_id.encode()))
    secret = forwarder.node_secret
    if secret:
        out = sign_node_headers(secret, "GET", scope["path"], out)
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in out]


def _sendable(code: object) -> int:
    """A close code that may be sent in a close frame (RFC 6455 section 7.4); 1000 otherwise."""
    if isinstance(code, int) and (
        code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011) or 3000 <= code < 5000
    ):
        return code
    return 1000


async def relay_websocket(forwarder: Forwarder, scope: Scope, receive: Receive, send: Send) -> None:
    """Open the same websocket on the primary and relay messages both ways until either side closes."""
    connect_message = await receive()
    if connect_message["type"] != "websocket.connect":
        return
    url = upstream_url(forwarder.topology.primary_url or "", scope, websocket=True)
    try:
        upstream = await connect(
            url,
            additional_headers=_upstream_headers(forwarder, scope),
            subprotocols=scope.get("subprotocols") or None,
            open_timeout=forwarder.connect_timeout,
            max_size=None,
            compression=None,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        logger.warning("primary refused the websocket %s with %d", clean(scope["path"]), status)
        await _refuse(scope, send, status, f"the primary answered the websocket handshake with {status}")
        return
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        logger.warning("cannot open websocket %s on the primary at %s: %s", clean(scope["path"]), clean(url), exc)
        await _refuse(scope, send, 503, f"cannot reach the primary for this websocket: {exc}")
        return
    forwarder.metrics.forwarded("proxy", "websocket")
    logger.info("relaying websocket %s to primary %s", clean(scope["path"]), forwarder.topology.primary_id)
    async with upstream:
        await send(
            {
                "type": "websocket.accept",
                "subprotocol": upstream.subprotocol,
                "headers": [(h.NODE, (forwarder.topology.primary_id or "").encode()), (h.FORWARDED_VIA, b"proxy")],
            }
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(_client_to_primary, receive, upstream)
            await _primary_to_client(upstream, send)
            tg.cancel_scope.cancel()


async def _client_to_primary(receive: Receive, upstream: ClientConnection) -> None:
    try:
        await _copy_to_primary(receive, upstream)
    except (ConnectionClosed, OSError) as exc:  # the client or the primary reset the connection
        logger.info("websocket relay to the primary ended: %s", exc)
        await upstream.close()


async def _copy_to_primary(receive: Receive, upstream: ClientConnection) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "websocket.disconnect":
            # A close without a status code arrives as 1005, which must not be sent on: 1000 then.
            reason = message.get("reason") or ""
            await upstream.close(
                code=_sendable(message.get("code", 1000)), reason=reason if isinstance(reason, str) else ""
            )
            return
        if message["type"] == "websocket.receive":
            text = message.get("text")
            try:
                await upstream.send(text if text is not None else message.get("bytes") or b"")
            except ConnectionClosed:
                return


async def _primary_to_client(upstream: ClientConnection, send: Send) -> None:
    try:
        async for data in upstream:
            if isinstance(data, str):
                await send({"type": "websocket.send", "text": data})
            else:
                await send({"type": "websocket.send", "bytes": data})
    except (ConnectionClosed, OSError):  # the primary reset the connection, or the client is gone
        pass
    code = _sendable(upstream.close_code)
    try:
        await send({"type": "websocket.close", "code": code, "reason": upstream.close_reason or ""})
    except Exception:  # the client is already gone
        pass


async def _refuse(scope: Scope, send: Send, status: int, message: str) -> None:
    if supports_denial(scope):
        await deny_websocket(send, status, [(b"content-type", b"text/plain; charset=utf-8")], message.encode())
    else:
        await send({"type": "websocket.close", "code": 1013 if status >= 500 else 1008, "reason": message[:120]})
