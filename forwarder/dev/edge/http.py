"""The edge's HTTP path: buffer a replayable body, send the request to a node with httpx, read a
`fly-replay` answer (header or JSON body), and stream the final response back to the client."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio
import httpx
from starlette.types import Receive, Scope, Send

from ...middleware.headers import HOP_BY_HOP
from .regions import EdgeNode
from .replay import REPLAY_CONTENT_TYPE, InvalidReplay, ReplayInstruction, parse_replay_header, parse_replay_json
from .request import Body, Headers, NodeRequest, edge_headers, node_request, request_id
from .routing import EdgeError, Replay, Router, Unreachable, describe

__all__ = ["HttpPath", "send_error"]

logger = logging.getLogger("forwarder.dev.edge")

CONNECT_TIMEOUT = 5.0


class _ClientGone(Exception):
    """The client disconnected while the edge was reading its body."""


class HttpPath:
    """Serves one HTTP request through `router`, talking to the nodes with `client`."""

    def __init__(self, router: Router, client: httpx.AsyncClient) -> None:
        self.router = router
        self.client = client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rotation = self.router.rotation()
        try:
            choice = self.router.first_choice(scope, rotation)
            body = await _read_body(receive, self.router.max_replay_body)
        except EdgeError as exc:
            await send_error(send, exc, NodeRequest("", "", [], Body(b""), request_id(None)))
            return
        except _ClientGone:
            return
        request = node_request(scope, choice, body)
        try:
            node, response = await self.router.route(request, choice, rotation, self._send)
        except EdgeError as exc:
            logger.warning("edge: %s %s -> %d: %s", request.method, request.target, exc.status, exc.message)
            await send_error(send, exc, request)
            return
        except _ClientGone:
            return
        await _stream_back(response, edge_headers(request, node), request.body, receive, send)

    async def _send(self, node: EdgeNode, request: NodeRequest, extra: Headers) -> httpx.Response:
        outgoing = httpx.Request(
            request.method,
            node.url.rstrip("/") + request.target,
            headers=request.headers + extra,
            content=request.body.content(),
            extensions={"timeout": httpx.Timeout(None, connect=CONNECT_TIMEOUT).as_dict()},
        )
        try:
            response = await self.client.send(outgoing, stream=True)
        except httpx.ConnectError as exc:
            if request.body.started:  # cannot happen with httpx (it connects before reading the body); be safe
                raise EdgeError(502, f"{describe(node)} refused the connection after the body started: {exc}") from exc
            raise Unreachable(f"{type(exc).__name__}: {exc}") from exc
        except httpx.TransportError as exc:
            raise EdgeError(
                502,
                f"{describe(node)} failed after the request reached it ({type(exc).__name__}: {exc}); "
                "the edge does not retry it because it may have run",
                node,
            ) from exc
        try:
            instruction = await _instruction(response)
        except InvalidReplay as exc:
            await response.aclose()
            raise EdgeError(502, f"PA03 invalid fly-replay from {describe(node)}: {exc}", node) from exc
        if instruction is None:
            return response
        await response.aclose()
        raise Replay(instruction, node)


async def send_error(send: Send, error: EdgeError, request: NodeRequest) -> None:
    """The edge's own answer: plain text naming the cause, with the edge's headers."""
    body = (error.message + "\n").encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": error.status, "headers": headers + edge_headers(request, error.node)}
    )
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive, limit: int) -> Body:
    """Buffer up to `limit` bytes; past that, a body that streams the prefix and then the rest."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone()
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return Body(data=b"".join(chunks), replayable=size <= limit)
        if size > limit:
            return Body(stream=_rest_of_body(b"".join(chunks), receive))


async def _rest_of_body(prefix: bytes, receive: Receive) -> AsyncIterator[bytes]:
    yield prefix
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone()
        if message.get("body"):
            yield message["body"]
        if not message.get("more_body", False):
            return


async def _instruction(response: httpx.Response) -> ReplayInstruction | None:
    """The replay a node's response asks for, if any (the header wins over the JSON form)."""
    value = response.headers.get("fly-replay")
    if value is not None:
        return parse_replay_header(value)
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == REPLAY_CONTENT_TYPE:
        return parse_replay_json(await response.aread())
    return None


async def _stream_back(response: httpx.Response, extra: Headers, body: Body, receive: Receive, send: Send) -> None:
    """Pass the node's response to the client chunk by chunk; stop if the client goes away."""
    headers = [(k.lower(), v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
    try:
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers + extra})
        async with anyio.create_task_group() as tg:
            if body.finished:  # otherwise receive() still belongs to the body stream
                tg.start_soon(_cancel_on_disconnect, receive, tg.cancel_scope)
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            tg.cancel_scope.cancel()
    except httpx.TransportError as exc:
        logger.warning("edge: the node's response broke off: %s: %s", type(exc).__name__, exc)
    finally:
        await response.aclose()


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
