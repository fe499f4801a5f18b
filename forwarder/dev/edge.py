"""The edge: an emulator of the Fly proxy that sits in front of a local cluster, on one port.

```python
edge = Edge(
    [EdgeNode("n1", "fra", "http://127.0.0.1:8001"), EdgeNode("n2", "ams", "http://127.0.0.1:8002")],
    latency=parse_latency(["ams=80ms"]),
)
async with serve_edge(edge, "127.0.0.1", 8080) as url:  # or uvicorn.run(edge, port=8080)
    ...
```

Which node gets a new request (Fly's client routing headers):

1. `fly-force-instance-id: <id>`: that node, else 503 (unknown or down).
2. `fly-prefer-instance-id: <id>`: that node, else any (the node is told with `fly-preferred-instance-unavailable`).
3. `fly-force-region: ams,fra`: nodes of those regions in order, else 503.
4. `fly-prefer-region: ams,fra`, then for browsers, which cannot set headers on a link, a
   `fly-region=<r>` cookie or a `?_region=<r>` query parameter: nodes of those regions first,
   then any node.
5. Otherwise round robin over all nodes.

A node that refuses the connection is down: the next node of the same region, then any node,
gets the request (forced choices excepted). The request goes out with `Fly-Client-IP`, `Fly-Region`
(the region of the first node chosen, standing for the edge that took the connection),
`X-Forwarded-For/Proto/Port/SSL` and `Via: 2 fly.io`. A response carrying `fly-replay` (or a
`application/vnd.fly.replay+json` body) is dropped and the original request is sent again where it
says, with `fly-replay-src` (see `forwarder.dev.replay` for the fields), up to `max_replays` times.
Bodies up to `max_replay_body` bytes are buffered so they can be replayed; larger ones are streamed
to the first node and cannot be replayed (PA01). Websockets are relayed both ways, and a node may
answer the upgrade with a non-101 `fly-replay` response to send it elsewhere. Every response gets
`fly-request-id`, `x-edge-node` (the node that answered) and `x-edge-replays`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import parse_qsl

import anyio
import httpx
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers as WSHeaders
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from .._http import node_client
from ..middleware.guard import framing_problem, refuse
from ..middleware.headers import HOP_BY_HOP
from ..middleware.target import target_problem
from .replay import (
    REPLAY_CONTENT_TYPE,
    Choice,
    EdgeNode,
    InvalidReplay,
    ReplayInstruction,
    fallback_choice,
    first_choice,
    parse_latency,
    parse_region_list,
    parse_replay_header,
    parse_replay_json,
    replay_choice,
)

__all__ = ["Edge", "EdgeNode", "parse_latency", "serve_edge"]

logger = logging.getLogger("forwarder.dev.edge")

T = TypeVar("T")
Headers = list[tuple[bytes, bytes]]

# Headers only the edge may set: a client's own values are dropped, so a node can trust them.
_EDGE_SET = frozenset(
    {
        b"fly-client-ip",
        b"fly-region",
        b"fly-forwarded-port",
        b"x-forwarded-proto",
        b"x-forwarded-port",
        b"x-forwarded-ssl",
        b"fly-replay-src",
        b"fly-replay-failed",
        b"fly-preferred-instance-unavailable",
    }
)
# The websockets client writes these itself for the handshake to the node.
_WS_HANDSHAKE = frozenset(
    {b"host", b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions", b"sec-websocket-protocol"}
)
_WS_RESPONSE_SKIP = HOP_BY_HOP | {
    b"sec-websocket-accept",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
    b"date",
    b"server",
}
_CONNECT_TIMEOUT = 5.0
_RETRY_INTERVAL = 0.1


class EdgeError(Exception):
    """An answer the edge gives itself (plain text, 502 or 503 like Fly's proxy)."""

    def __init__(self, status: int, message: str, node: EdgeNode | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.node = node


class _Unreachable(Exception):
    """The node refused or dropped the connection before the request reached it: safe to try another."""


class _NoTarget(Exception):
    """No node of a choice could be reached; `reason` uses the words of Fly's `fly-replay-failed`."""

    def __init__(self, reason: str, failures: list[str]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.failures = failures


class _Replay(Exception):
    """A node answered with `fly-replay`; its response is already discarded."""

    def __init__(self, instruction: ReplayInstruction, node: EdgeNode) -> None:
        super().__init__(instruction.source)
        self.instruction = instruction
        self.node = node


class _ClientGone(Exception):
    """The client disconnected while the edge was reading its body."""


class _Body:
    """The request body: complete bytes, or a buffered prefix plus the rest of the stream.

    Only a complete body no larger than the replay limit is `replayable`.
    """

    def __init__(
        self, data: bytes | None = None, stream: AsyncIterator[bytes] | None = None, *, replayable: bool = True
    ) -> None:
        self.data = data
        self._stream = stream
        self.replayable = replayable and data is not None
        self.started = False  # a streamed body cannot be sent to a second node once it started
        self.finished = data is not None

    def content(self) -> bytes | AsyncIterator[bytes]:
        return self.data if self.data is not None else self._tracked()

    async def _tracked(self) -> AsyncIterator[bytes]:
        assert self._stream is not None
        self.started = True
        async for chunk in self._stream:
            yield chunk
        self.finished = True


@dataclass
class _Request:
    """What the edge sends (and re-sends on replay) to nodes, and what happened to it so far."""

    method: str
    target: str  # path and query
    headers: Headers
    body: _Body
    request_id: str
    subprotocols: list[str] = field(default_factory=list)
    replays: int = 0


@dataclass
class _Denial:
    """A node's non-101 answer to a websocket upgrade that was not a replay."""

    status: int
    headers: Headers
    body: bytes


SendTo = Callable[[EdgeNode, _Request, Headers], Awaitable[T]]
"""Send a request to one node: its answer, or raise `_Unreachable`, `_Replay` or `EdgeError`."""


class Edge:
    """An ASGI app that plays Fly's proxy in front of `nodes` (see the module docstring).

    `latency` maps a region to seconds slept before each request or websocket handshake sent to
    a node of that region (see `parse_latency`). `client` is used for HTTP to the nodes; by
    default the edge makes its own and closes it at lifespan shutdown or `aclose()`.
    """

    def __init__(
        self,
        nodes: Sequence[EdgeNode],
        *,
        latency: dict[str, float] | None = None,
        max_replays: int = 10,
        max_replay_body: int = 1_048_576,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not nodes:
            raise ValueError("Edge needs at least one node")
        ids = [node.id for node in nodes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"Edge node ids must be unique, got {ids}")
        self.nodes = tuple(nodes)
        self.latency = dict(latency or {})
        self.max_replays = max_replays
        self.max_replay_body = max_replay_body
        self._owns_client = client is None
        self.client = client or node_client(limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
        self._round_robin = itertools.count()

    async def aclose(self) -> None:
        """Close the HTTP client if the edge created it."""
        if self._owns_client:
            await self.client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            problem = target_problem(scope)  # the target rule and framing checks, as on every node
            if problem is None and scope["type"] == "http":
                problem = framing_problem(scope["headers"])
            if problem is not None:
                await refuse(scope, send, 400, f"edge: {problem}")
                return
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- HTTP ---------------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        rotation = self._rotation()
        try:
            choice = self._first_choice(scope, rotation)
            body = await _read_body(receive, self.max_replay_body)
        except EdgeError as exc:
            await _send_error(send, exc, _Request("", "", [], _Body(b""), _request_id(None)))
            return
        except _ClientGone:
            return
        request = _request(scope, choice, body)
        try:
            node, response = await self._route(request, choice, rotation, self._send_http)
        except EdgeError as exc:
            logger.warning("edge: %s %s -> %d: %s", request.method, request.target, exc.status, exc.message)
            await _send_error(send, exc, request)
            return
        except _ClientGone:
            return
        await _stream_back(response, _edge_headers(request, node), request.body, receive, send)

    async def _send_http(self, node: EdgeNode, request: _Request, extra: Headers) -> httpx.Response:
        outgoing = httpx.Request(
            request.method,
            node.url.rstrip("/") + request.target,
            headers=request.headers + extra,
            content=request.body.content(),
            extensions={"timeout": httpx.Timeout(None, connect=_CONNECT_TIMEOUT).as_dict()},
        )
        try:
            response = await self.client.send(outgoing, stream=True)
        except httpx.ConnectError as exc:
            if request.body.started:  # cannot happen with httpx (it connects before reading the body); be safe
                raise EdgeError(502, f"{_name(node)} refused the connection after the body started: {exc}") from exc
            raise _Unreachable(f"{type(exc).__name__}: {exc}") from exc
        except httpx.TransportError as exc:
            raise EdgeError(
                502,
                f"{_name(node)} failed after the request reached it ({type(exc).__name__}: {exc}); "
                "the edge does not retry it because it may have run",
                node,
            ) from exc
        try:
            instruction = await _http_instruction(response)
        except InvalidReplay as exc:
            await response.aclose()
            raise EdgeError(502, f"PA03 invalid fly-replay from {_name(node)}: {exc}", node) from exc
        if instruction is None:
            return response
        await response.aclose()
        raise _Replay(instruction, node)

    # -- websockets ---------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        rotation = self._rotation()
        request = _request(scope, Choice(()), _Body(b""))
        try:
            choice = self._first_choice(scope, rotation)
            request = _request(scope, choice, _Body(b""))
            node, answer = await self._route(request, choice, rotation, self._send_ws)
        except EdgeError as exc:
            logger.warning("edge: websocket %s -> %d: %s", request.target, exc.status, exc.message)
            headers = _edge_headers(request, exc.node) + [(b"content-type", b"text/plain; charset=utf-8")]
            await _deny(scope, send, _Denial(exc.status, headers, (exc.message + "\n").encode()))
            return
        if isinstance(answer, _Denial):
            await _deny(scope, send, _Denial(answer.status, answer.headers + _edge_headers(request, node), answer.body))
            return
        async with answer as ws:
            headers = [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in (ws.response.headers.raw_items() if ws.response is not None else [])
                if name.lower().encode("latin-1") not in _WS_RESPONSE_SKIP
            ]
            accept: Message = {"type": "websocket.accept", "headers": headers + _edge_headers(request, node)}
            if ws.subprotocol is not None:
                accept["subprotocol"] = ws.subprotocol
            await send(accept)
            await _relay(receive, send, ws)

    async def _send_ws(self, node: EdgeNode, request: _Request, extra: Headers) -> ClientConnection | _Denial:
        scheme = "wss" if node.url.startswith("https:") else "ws"
        uri = f"{scheme}://{node.url.split('://', 1)[-1].rstrip('/')}{request.target}"
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers + extra
            if name not in _WS_HANDSHAKE
        ]
        try:
            return await connect(
                uri,
                additional_headers=headers,
                subprotocols=[Subprotocol(p) for p in request.subprotocols] or None,
                user_agent_header=None,
                open_timeout=_CONNECT_TIMEOUT,
                ping_interval=None,  # the two ends keep the connection alive themselves
                max_size=None,
            )
        except InvalidStatus as exc:
            return _ws_refusal(node, exc.response.status_code, exc.response.headers, bytes(exc.response.body or b""))
        except TimeoutError as exc:
            raise EdgeError(502, f"{_name(node)} did not complete the websocket handshake in time", node) from exc
        except OSError as exc:
            raise _Unreachable(f"{type(exc).__name__}: {exc}") from exc
        except InvalidHandshake as exc:
            raise EdgeError(502, f"{_name(node)} answered the websocket upgrade wrongly: {exc}", node) from exc

    # -- routing ------------------------------------------------------------------------------

    def _rotation(self) -> tuple[EdgeNode, ...]:
        start = next(self._round_robin) % len(self.nodes)
        return self.nodes[start:] + self.nodes[:start]

    def _first_choice(self, scope: Scope, rotation: Sequence[EdgeNode]) -> Choice:
        headers = {name.lower(): value.decode("latin-1").strip() for name, value in scope["headers"]}
        force_instance = headers.get(b"fly-force-instance-id")
        force_regions = parse_region_list(headers.get(b"fly-force-region", ""))
        prefer_regions = parse_region_list(headers.get(b"fly-prefer-region", "")) or _browser_regions(scope)
        choice = first_choice(
            rotation,
            force_instance=force_instance,
            prefer_instance=headers.get(b"fly-prefer-instance-id"),
            force_regions=force_regions,
            prefer_regions=prefer_regions,
        )
        if not choice.nodes and force_instance is not None:
            raise EdgeError(503, f"fly-force-instance-id: no node {force_instance!r}; nodes: {self._known()}")
        if not choice.nodes:
            raise EdgeError(503, f"fly-force-region: no node in {', '.join(force_regions)}; nodes: {self._known()}")
        return choice

    def _known(self) -> str:
        return ", ".join(f"{node.id} ({node.region})" for node in self.nodes)

    async def _route(
        self, request: _Request, choice: Choice, rotation: Sequence[EdgeNode], send_to: SendTo[T]
    ) -> tuple[EdgeNode, T]:
        """Send `request` to the first reachable node of `choice`, then follow replays; the final answer."""
        try:
            return await self._reach(choice, request, [], send_to, timeout=None)
        except _NoTarget as exc:
            raise EdgeError(503, f"no node could be reached: {'; '.join(exc.failures)}") from None
        except _Replay as replay:
            current = replay
        while True:
            instruction, source = current.instruction, current.node
            self._check_replayable(request, instruction, source)
            request.replays += 1
            _apply_transform(request, instruction)
            src = f"instance={source.id};region={source.region};t={time.time_ns() // 1000}"
            src += f";state={instruction.state}" if instruction.state is not None else ""
            started = time.monotonic()
            target = replay_choice(rotation, instruction, source)
            logger.debug(
                "edge: %s %s: %s replays it (%s)", request.method, request.target, source.id, instruction.source
            )
            try:
                try:
                    header = (b"fly-replay-src", src.encode())
                    return await self._reach(target, request, [header], send_to, timeout=instruction.timeout)
                except _NoTarget as exc:
                    return await self._fall_back(request, instruction, source, exc, started, rotation, send_to)
            except _Replay as replay:
                current = replay

    def _check_replayable(self, request: _Request, instruction: ReplayInstruction, node: EdgeNode) -> None:
        said = f"{_name(node)} answered with fly-replay {instruction.source!r}"
        if not request.body.replayable:
            raise EdgeError(
                502,
                f"PA01 Requests larger than 1MB cannot be replayed: {said} but the body is over "
                f"{self.max_replay_body} bytes; send large uploads where they belong (fly-prefer-region) "
                "or proxy them instead of replaying",
                node,
            )
        if request.replays >= self.max_replays:
            raise EdgeError(
                502,
                f"PA02 Excess fly-replay headers: {said} after {request.replays} replays (limit {self.max_replays}); "
                "a replay loop? A node should not replay a request that carries fly-replay-src",
                node,
            )
        if instruction.app is not None:
            raise EdgeError(
                502, f"PA04 replay target app not found: {said}; the edge serves one app and has no 'app' routing", node
            )

    async def _fall_back(
        self,
        request: _Request,
        instruction: ReplayInstruction,
        source: EdgeNode,
        failure: _NoTarget,
        started: float,
        rotation: Sequence[EdgeNode],
        send_to: SendTo[T],
    ) -> tuple[EdgeNode, T]:
        """Deliver a replay that found no target back to its source (`fallback=`), or fail with 502."""
        detail = f"fly-replay {instruction.source!r} from {_name(source)}: {failure.reason}"
        detail += f" ({'; '.join(failure.failures)})" if failure.failures else ""
        if instruction.fallback is None:
            raise EdgeError(502, f"no candidate for {detail}; add fallback=prefer_self to get it back", source)
        target = instruction.instance or instruction.prefer_instance
        parts = [f"instance={target}"] if target else []
        parts += [f"region={','.join(instruction.regions)}"] if instruction.regions else []
        parts += [f"replay_source={source.id}", f"reason={failure.reason}"]
        parts += [f"elapsed_ms={round((time.monotonic() - started) * 1000)}"]
        header = (b"fly-replay-failed", ";".join(parts).encode())
        try:
            choice = fallback_choice(rotation, instruction.fallback, source)
            return await self._reach(choice, request, [header], send_to, timeout=None)
        except _NoTarget as exc:
            raise EdgeError(502, f"{detail}, and fallback={instruction.fallback} failed too: {exc.failures}") from None
        except _Replay as again:
            raise EdgeError(
                502,
                f"PA02 fallback request cannot be replayed: {_name(again.node)} got the request back after {detail} "
                f"and answered with fly-replay {again.instruction.source!r}; handle requests carrying "
                "fly-replay-failed without replaying them",
                again.node,
            ) from None

    async def _reach(
        self, choice: Choice, request: _Request, extra: Headers, send_to: SendTo[T], *, timeout: float | None
    ) -> tuple[EdgeNode, T]:
        """Try the nodes of `choice` in order until one takes the request; keep trying until `timeout`."""
        if not choice.nodes:
            raise _NoTarget("no_candidate", [])
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            failures: list[str] = []
            for node in choice.nodes:
                await anyio.sleep(self.latency.get(node.region, 0.0))
                try:
                    extra_for_node = extra + [(k.encode(), v.encode()) for k, v in choice.extra_headers(node)]
                    return node, await send_to(node, request, extra_for_node)
                except _Unreachable as exc:
                    failures.append(f"{_name(node)}: {exc}")
            if deadline is None:
                raise _NoTarget("retries_exhausted", failures)
            if time.monotonic() >= deadline:
                raise _NoTarget("timeout", failures)
            await anyio.sleep(min(_RETRY_INTERVAL, max(0.0, deadline - time.monotonic())))


# -- helpers ----------------------------------------------------------------------------------


def _name(node: EdgeNode) -> str:
    return f"node {node.id} ({node.region}, {node.url})"


def _request_id(node: EdgeNode | None) -> str:
    return secrets.token_hex(13) + (f"-{node.region}" if node else "")


def _browser_regions(scope: Scope) -> tuple[str, ...]:
    """Regions from `?_region=` or else a `fly-region` cookie (browsers cannot set routing headers on links).

    The query wins, so a link switches region; the edge then sets the cookie (`_region_cookie`), so
    the page's own requests (scripts, its websocket) stay in that region too.
    """
    query = _query_region(scope.get("query_string", b""))
    if query:
        return parse_region_list(query)
    for name, value in scope["headers"]:
        if name.lower() == b"cookie":
            for pair in value.decode("latin-1").split(";"):
                key, _, text = pair.strip().partition("=")
                if key == "fly-region" and text:
                    return parse_region_list(text)
    return ()


def _query_region(query: bytes) -> str | None:
    for key, text in parse_qsl(query.decode("latin-1")):
        if key == "_region" and text:
            return text
    return None


def _request(scope: Scope, choice: Choice, body: _Body) -> _Request:
    """The request as nodes get it: the client's end-to-end headers plus what Fly's proxy adds."""
    edge_node = choice.nodes[0] if choice.nodes else None
    path: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string", b"")
    target = (path + (b"?" + query if query else b"")).decode("latin-1")
    headers = [(k.lower(), v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP | _EDGE_SET]
    client = scope.get("client")
    ip = (client[0] if client else "127.0.0.1").encode()
    https = scope.get("scheme") in ("https", "wss")
    server = scope.get("server")
    port = str(server[1] if server and server[1] else (443 if https else 80)).encode()
    forwarded_for = b", ".join([v for k, v in headers if k == b"x-forwarded-for"] + [ip])
    via = b", ".join([v for k, v in headers if k == b"via"] + [b"2 fly.io"])
    headers = [(k, v) for k, v in headers if k not in (b"x-forwarded-for", b"via")]
    headers += [
        (b"fly-client-ip", ip),
        (b"fly-region", (edge_node.region if edge_node else "").encode()),
        (b"fly-forwarded-port", port),
        (b"x-forwarded-for", forwarded_for),
        (b"x-forwarded-proto", b"https" if https else b"http"),
        (b"x-forwarded-port", port),
        (b"x-forwarded-ssl", b"on" if https else b"off"),
        (b"via", via),
    ]
    return _Request(
        method=scope.get("method", "GET"),
        target=target,
        headers=headers,
        body=body,
        request_id=_request_id(edge_node),
        subprotocols=list(scope.get("subprotocols", [])),
    )


def _apply_transform(request: _Request, instruction: ReplayInstruction) -> None:
    """The JSON form's `transform`: new path, deleted and set headers, from this replay on."""
    transform = instruction.transform
    if transform is None:
        return
    if transform.path is not None:
        request.target = transform.path
    drop = {name.encode() for name in transform.delete_headers} | {n.lower().encode() for n, _ in transform.set_headers}
    request.headers = [(k, v) for k, v in request.headers if k not in drop]
    request.headers += [(n.lower().encode(), v.encode()) for n, v in transform.set_headers]


def _edge_headers(request: _Request, node: EdgeNode | None) -> Headers:
    headers = [(b"fly-request-id", request.request_id.encode()), (b"x-edge-replays", str(request.replays).encode())]
    region = _query_region(request.target.partition("?")[2].encode("latin-1"))
    if region and all(c.isalnum() or c in ",-" for c in region):
        headers.append((b"set-cookie", f"fly-region={region}; Path=/; SameSite=Lax".encode()))
    return headers + ([(b"x-edge-node", node.id.encode())] if node is not None else [])


async def _read_body(receive: Receive, limit: int) -> _Body:
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
            return _Body(data=b"".join(chunks), replayable=size <= limit)
        if size > limit:
            return _Body(stream=_rest_of_body(b"".join(chunks), receive))


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


async def _http_instruction(response: httpx.Response) -> ReplayInstruction | None:
    """The replay a node's response asks for, if any (the header wins over the JSON form)."""
    value = response.headers.get("fly-replay")
    if value is not None:
        return parse_replay_header(value)
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == REPLAY_CONTENT_TYPE:
        return parse_replay_json(await response.aread())
    return None


def _ws_refusal(node: EdgeNode, status: int, headers: WSHeaders, body: bytes) -> _Denial:
    """A node's non-101 answer to an upgrade: raise `_Replay` for a replay, else a denial to pass on."""
    try:
        if "fly-replay" in headers:
            raise _Replay(parse_replay_header(headers["fly-replay"]), node)
        if headers.get("content-type", "").split(";")[0].strip().lower() == REPLAY_CONTENT_TYPE:
            raise _Replay(parse_replay_json(body), node)
    except InvalidReplay as exc:
        raise EdgeError(502, f"PA03 invalid fly-replay from {_name(node)}: {exc}", node) from exc
    kept = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in headers.raw_items()
        if name.lower().encode("latin-1") not in HOP_BY_HOP | {b"content-length", b"date", b"server"}
    ]
    return _Denial(status, kept, body)


async def _send_error(send: Send, error: EdgeError, request: _Request) -> None:
    body = (error.message + "\n").encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": error.status, "headers": headers + _edge_headers(request, error.node)}
    )
    await send({"type": "http.response.body", "body": body})


async def _stream_back(response: httpx.Response, extra: Headers, body: _Body, receive: Receive, send: Send) -> None:
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


async def _deny(scope: Scope, send: Send, denial: _Denial) -> None:
    """Refuse a websocket with an HTTP response if the server can send one, else close 1011/1013."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await send({"type": "websocket.http.response.start", "status": denial.status, "headers": denial.headers})
        await send({"type": "websocket.http.response.body", "body": denial.body})
        return
    reason = denial.body.decode("utf-8", "replace").strip()[:120]
    await send({"type": "websocket.close", "code": 1013 if denial.status == 503 else 1011, "reason": reason})


async def _relay(receive: Receive, send: Send, ws: ClientConnection) -> None:
    """Copy messages both ways until one side closes, then close the other with the same code."""

    async def client_to_node(scope: anyio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                await ws.close(_sendable(message.get("code"), 1000), message.get("reason") or "")
                scope.cancel()
                return
            if message["type"] == "websocket.receive":
                text = message.get("text")
                await ws.send(text if text is not None else message.get("bytes") or b"")

    async def node_to_client(scope: anyio.CancelScope) -> None:
        with suppress(ConnectionClosed):
            async for data in ws:
                key = "text" if isinstance(data, str) else "bytes"
                await send({"type": "websocket.send", key: data})
        code = _sendable(ws.close_code, 1000 if ws.close_code == 1005 else 1011)
        await send({"type": "websocket.close", "code": code, "reason": ws.close_reason or ""})
        scope.cancel()

    with suppress(OSError):  # the client went away while the edge was writing to it
        async with anyio.create_task_group() as tg:
            tg.start_soon(client_to_node, tg.cancel_scope)
            tg.start_soon(node_to_client, tg.cancel_scope)


def _sendable(code: int | None, default: int) -> int:
    """A close code that may go in a close frame (1005, 1006 and 1015 only describe what happened)."""
    return default if code is None or code in (1005, 1006, 1015) else code


@asynccontextmanager
async def serve_edge(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `app` (the edge, or any ASGI app) with uvicorn in this event loop; yields its base URL.

    `port=0` picks a free port. Leaving the block stops the server (and closes the edge's client).
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="auto",
        proxy_headers=False,  # the edge faces the clients: their X-Forwarded-For is not to be trusted
        server_header=False,  # the nodes' own Server and Date headers pass through
        date_header=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # uvicorn has no event to wait on; poll its flag
            if task.done():
                task.result()
                raise RuntimeError(f"uvicorn stopped before it started serving on {host}:{port}")
            await asyncio.sleep(0.005)
        bound = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        await task
