"""Websockets that must live on the primary: relayed there (proxy mode) or refused with fly-replay."""

from __future__ import annotations

import logging

import anyio
from starlette.types import Message, Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ..runtime import Forwarder
from . import headers as h

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


def _upstream_url(forwarder: Forwarder, scope: Scope) -> str:
    base = (forwarder.topology.primary_url or "").rstrip("/")
    base = "ws" + base[len("http") :] if base.startswith("http") else base
    path: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string", b"")
    return base + path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")


def _upstream_headers(forwarder: Forwarder, scope: Scope) -> list[tuple[str, str]]:
    out = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k.lower() not in _NOT_RELAYED]
    client = scope.get("client")
    if client:
        out.append(("x-forwarded-for", client[0]))
    out.append((h.FORWARDED_BY.decode(), forwarder.topology.node_id))
    return out


async def relay_websocket(forwarder: Forwarder, scope: Scope, receive: Receive, send: Send) -> None:
    """Open the same websocket on the primary and relay messages both ways until either side closes."""
    connect_message = await receive()
    if connect_message["type"] != "websocket.connect":
        return
    url = _upstream_url(forwarder, scope)
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
        logger.warning("primary refused the websocket %s with %d", scope["path"], status)
        await _refuse(scope, send, status, f"the primary answered the websocket handshake with {status}")
        return
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        logger.warning("cannot open websocket %s on the primary at %s: %s", scope["path"], url, exc)
        await _refuse(scope, send, 503, f"cannot reach the primary for this websocket: {exc}")
        return
    forwarder.metrics.forwarded("proxy", "websocket")
    logger.info("relaying websocket %s to primary %s", scope["path"], forwarder.topology.primary_id)
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
    while True:
        message: Message = await receive()
        if message["type"] == "websocket.disconnect":
            await upstream.close(code=message.get("code", 1000), reason=message.get("reason") or "")
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
    except ConnectionClosed:
        pass
    code = upstream.close_code or 1000
    try:
        await send({"type": "websocket.close", "code": code, "reason": upstream.close_reason or ""})
    except Exception:  # the client is already gone
        pass


async def _refuse(scope: Scope, send: Send, status: int, message: str) -> None:
    if supports_denial(scope):
        await deny_websocket(send, status, [(b"content-type", b"text/plain; charset=utf-8")], message.encode())
    else:
        await send({"type": "websocket.close", "code": 1013 if status >= 500 else 1008, "reason": message[:120]})
