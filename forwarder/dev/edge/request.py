"""The request as the edge sends it (and sends it again on a replay): the client's end-to-end headers
plus what Fly's proxy adds, the body, and the headers the edge puts on every answer."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starlette.types import Scope

from ...middleware.headers import HOP_BY_HOP
from .regions import Choice, EdgeNode, region_cookie
from .replay import ReplayInstruction

__all__ = [
    "EDGE_SET",
    "Body",
    "Headers",
    "NodeRequest",
    "apply_transform",
    "edge_headers",
    "node_request",
    "request_id",
]

Headers = list[tuple[bytes, bytes]]

EDGE_SET = frozenset(
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
"""Headers only the edge may set: a client's own values are dropped, so a node can trust them."""


class Body:
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
        """What to hand httpx: the bytes, or the stream (marking the body started and finished as it goes)."""
        return self.data if self.data is not None else self._tracked()

    async def _tracked(self) -> AsyncIterator[bytes]:
        assert self._stream is not None
        self.started = True
        async for chunk in self._stream:
            yield chunk
        self.finished = True


@dataclass
class NodeRequest:
    """What the edge sends (and re-sends on replay) to nodes, and what happened to it so far."""

    method: str
    target: str  # path and query
    headers: Headers
    body: Body
    request_id: str
    subprotocols: list[str] = field(default_factory=list)
    replays: int = 0


def request_id(node: EdgeNode | None) -> str:
    """A `fly-request-id` like Fly's: random, with the edge's region appended."""
    return secrets.token_hex(13) + (f"-{node.region}" if node else "")


def node_request(scope: Scope, choice: Choice, body: Body) -> NodeRequest:
    """The request as nodes get it: the client's end-to-end headers plus what Fly's proxy adds."""
    edge_node = choice.nodes[0] if choice.nodes else None
    path: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string", b"")
    target = (path + (b"?" + query if query else b"")).decode("latin-1")
    headers = [(k.lower(), v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP | EDGE_SET]
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
    return NodeRequest(
        method=scope.get("method", "GET"),
        target=target,
        headers=headers,
        body=body,
        request_id=request_id(edge_node),
        subprotocols=list(scope.get("subprotocols", [])),
    )


def apply_transform(request: NodeRequest, instruction: ReplayInstruction) -> None:
    """The JSON form's `transform`: new path, deleted and set headers, from this replay on."""
    transform = instruction.transform
    if transform is None:
        return
    if transform.path is not None:
        request.target = transform.path
    drop = {name.encode() for name in transform.delete_headers} | {n.lower().encode() for n, _ in transform.set_headers}
    request.headers = [(k, v) for k, v in request.headers if k not in drop]
    request.headers += [(n.lower().encode(), v.encode()) for n, v in transform.set_headers]


def edge_headers(request: NodeRequest, node: EdgeNode | None) -> Headers:
    """Headers on every answer: `fly-request-id`, `x-edge-replays`, `x-edge-node`, and the region cookie."""
    headers = [(b"fly-request-id", request.request_id.encode()), (b"x-edge-replays", str(request.replays).encode())]
    cookie = region_cookie(request.target)
    if cookie is not None:
        headers.append((b"set-cookie", cookie))
    return headers + ([(b"x-edge-node", node.id.encode())] if node is not None else [])
