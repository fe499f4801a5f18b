"""The edge as one ASGI app: the checks every node makes, then the HTTP or websocket path; and `serve_edge`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import httpx
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from ..._http import KEEPALIVE_EXPIRY, node_client
from ...middleware.guard import framing_problem, refuse
from ...middleware.target import target_problem
from .http import HttpPath
from .regions import EdgeNode
from .routing import Router
from .websocket import WebsocketPath

__all__ = ["Edge", "serve_edge"]


class Edge:
    """An ASGI app that plays Fly's proxy in front of `nodes` (see `forwarder.dev.edge`).

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
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64, keepalive_expiry=KEEPALIVE_EXPIRY)
        self.client = client or node_client(limits=limits)
        router = Router(self.nodes, latency=self.latency, max_replays=max_replays, max_replay_body=max_replay_body)
        self._http = HttpPath(router, self.client)
        self._websocket = WebsocketPath(router)

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
        http="h11",  # not httptools (installed by forwarder[server]): it hides absolute-form targets
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
