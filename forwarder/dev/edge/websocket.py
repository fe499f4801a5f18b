"""The edge's websocket path: open the same websocket on a node (which may answer the upgrade with a
`fly-replay` to send it elsewhere), then relay it with `forwarder.websocket_relay`."""

from __future__ import annotations

import logging

from starlette.types import Message, Receive, Scope, Send
from websockets.asyncio.client import ClientConnection
from websockets.datastructures import Headers as WSHeaders
from websockets.exceptions import InvalidHandshake, InvalidStatus

from ...middleware.headers import HOP_BY_HOP
from ...websocket_relay import connect_upstream, relay
from .http import CONNECT_TIMEOUT
from .regions import Choice, EdgeNode
from .replay import REPLAY_CONTENT_TYPE, InvalidReplay, parse_replay_header, parse_replay_json
from .request import Body, Headers, NodeRequest, edge_headers, node_request
from .routing import EdgeError, Replay, Router, Unreachable, describe

__all__ = ["WebsocketPath"]

logger = logging.getLogger("forwarder.dev.edge")

# The websockets client writes these itself for the handshake to the node.
_HANDSHAKE = frozenset(
    {b"host", b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions", b"sec-websocket-protocol"}
)
_RESPONSE_SKIP = HOP_BY_HOP | {
    b"sec-websocket-accept",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
    b"date",
    b"server",
}


class _Denial:
    """A node's non-101 answer to a websocket upgrade that was not a replay."""

    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class WebsocketPath:
    """Serves one websocket through `router`: handshake with a node, then relay until either side ends."""

    def __init__(self, router: Router) -> None:
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        rotation = self.router.rotation()
        request = node_request(scope, Choice(()), Body(b""))
        try:
            choice = self.router.first_choice(scope, rotation)
            request = node_request(scope, choice, Body(b""))
            node, answer = await self.router.route(request, choice, rotation, _open)
        except EdgeError as exc:
            logger.warning("edge: websocket %s -> %d: %s", request.target, exc.status, exc.message)
            headers = edge_headers(request, exc.node) + [(b"content-type", b"text/plain; charset=utf-8")]
            await _deny(scope, send, _Denial(exc.status, headers, (exc.message + "\n").encode()))
            return
        if isinstance(answer, _Denial):
            await _deny(scope, send, _Denial(answer.status, answer.headers + edge_headers(request, node), answer.body))
            return
        async with answer as ws:
            headers = [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in (ws.response.headers.raw_items() if ws.response is not None else [])
                if name.lower().encode("latin-1") not in _RESPONSE_SKIP
            ]
            accept: Message = {"type": "websocket.accept", "headers": headers + edge_headers(request, node)}
            if ws.subprotocol is not None:
                accept["subprotocol"] = ws.subprotocol
            await send(accept)
            end = await relay(receive, send, ws)
            logger.debug("edge: websocket %s on %s ended by the %s (%d)", request.target, node.id, end.by, end.code)


async def _open(node: EdgeNode, request: NodeRequest, extra: Headers) -> ClientConnection | _Denial:
    """The handshake with one node: the connection, a denial to pass on, or `Replay`/`Unreachable`/`EdgeError`."""
    scheme = "wss" if node.url.startswith("https:") else "ws"
    uri = f"{scheme}://{node.url.split('://', 1)[-1].rstrip('/')}{request.target}"
    headers = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in request.headers + extra
        if name not in _HANDSHAKE
    ]
    try:
        return await connect_upstream(
            uri, headers=headers, subprotocols=request.subprotocols, open_timeout=CONNECT_TIMEOUT
        )
    except InvalidStatus as exc:
        return _refusal(node, exc.response.status_code, exc.response.headers, bytes(exc.response.body or b""))
    except TimeoutError as exc:
        raise EdgeError(502, f"{describe(node)} did not complete the websocket handshake in time", node) from exc
    except OSError as exc:
        raise Unreachable(f"{type(exc).__name__}: {exc}") from exc
    except InvalidHandshake as exc:
        raise EdgeError(502, f"{describe(node)} answered the websocket upgrade wrongly: {exc}", node) from exc


def _refusal(node: EdgeNode, status: int, headers: WSHeaders, body: bytes) -> _Denial:
    """A node's non-101 answer to an upgrade: raise `Replay` for a replay, else a denial to pass on."""
    try:
        if "fly-replay" in headers:
            raise Replay(parse_replay_header(headers["fly-replay"]), node)
        if headers.get("content-type", "").split(";")[0].strip().lower() == REPLAY_CONTENT_TYPE:
            raise Replay(parse_replay_json(body), node)
    except InvalidReplay as exc:
        raise EdgeError(502, f"PA03 invalid fly-replay from {describe(node)}: {exc}", node) from exc
    kept = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in headers.raw_items()
        if name.lower().encode("latin-1") not in HOP_BY_HOP | {b"content-length", b"date", b"server"}
    ]
    return _Denial(status, kept, body)


async def _deny(scope: Scope, send: Send, denial: _Denial) -> None:
    """Refuse a websocket with an HTTP response if the server can send one, else close 1011/1013."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await send({"type": "websocket.http.response.start", "status": denial.status, "headers": denial.headers})
        await send({"type": "websocket.http.response.body", "body": denial.body})
        return
    reason = denial.body.decode("utf-8", "replace").strip()[:120]
    await send({"type": "websocket.close", "code": 1013 if denial.status == 503 else 1011, "reason": reason})
