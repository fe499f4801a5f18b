"""Websockets that must live on the primary: relayed there (proxy mode) or refused with fly-replay."""

from __future__ import annotations

import logging

from starlette.types import Receive, Scope, Send
from websockets.exceptions import InvalidHandshake, InvalidStatus

from ..logsafe import clean
from ..node_headers import CLIENT_HEADERS, PREFIX, end_to_end, sign_node_headers, with_forwarded_for
from ..runtime import Forwarder
from ..websocket_relay import connect_upstream, relay
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


async def relay_websocket(forwarder: Forwarder, scope: Scope, receive: Receive, send: Send) -> None:
    """Open the same websocket on the primary and relay messages both ways until either side closes."""
    connect_message = await receive()
    if connect_message["type"] != "websocket.connect":
        return
    url = upstream_url(forwarder.topology.primary_url or "", scope, websocket=True)
    try:
        upstream = await connect_upstream(
            url,
            headers=_upstream_headers(forwarder, scope),
            subprotocols=scope.get("subprotocols"),
            open_timeout=forwarder.connect_timeout,
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
        end = await relay(receive, send, upstream)
    logger.info("websocket %s relayed to the primary ended by the %s (%d)", clean(scope["path"]), end.by, end.code)


async def _refuse(scope: Scope, send: Send, status: int, message: str) -> None:
    if supports_denial(scope):
        await deny_websocket(send, status, [(b"content-type", b"text/plain; charset=utf-8")], message.encode())
    else:
        await send({"type": "websocket.close", "code": 1013 if status >= 500 else 1008, "reason": message[:120]})
