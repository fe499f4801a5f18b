"""`ForwarderMiddleware`: the pure-ASGI middleware that routes each request for its node's role."""

from __future__ import annotations

import logging

from starlette.datastructures import MutableHeaders
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import context
from ..rpc.server import serve_rpc
from ..rpc.wire import RPC_PATH_PREFIX
from ..runtime import Forwarder
from . import headers as h
from .internal import INTERNAL_PREFIX, serve_health
from .proxy import forward_http, unavailable

__all__ = ["ForwarderMiddleware"]

logger = logging.getLogger("forwarder.middleware")

DEFAULT_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ForwarderMiddleware:
    """Make a multi-node app behave as one node: reads local, writes on the primary.

    On the primary every request goes to the app, and responses to writes carry
    `Forwarder-Txid`. On a replica reads are served locally and writes (any method not in
    `read_methods`) are streamed to the primary; the response is held until this replica holds
    the write's txid, so the client's next read here sees it. `/_forwarder/rpc/<name>` runs
    `@primary_only` functions and `/_forwarder/health` reports the node's state.

    The middleware also starts and stops `forwarder` in the app's lifespan.

    ```python
    app = ForwarderMiddleware(Starlette(routes=routes), forwarder=Forwarder.from_settings())
    ```
    """

    def __init__(
        self, app: ASGIApp, *, forwarder: Forwarder, read_methods: frozenset[str] = DEFAULT_READ_METHODS
    ) -> None:
        self.app = app
        self.forwarder = forwarder
        self.read_methods = frozenset(m.upper() for m in read_methods)
        self._node = forwarder.topology.node_id.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        token = context._current.set(self.forwarder)
        try:
            if scope["type"] == "websocket":
                await self.app(scope, receive, send)
            else:
                await self._http(scope, receive, send)
        finally:
            context._current.reset(token)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        forwarder = self.forwarder
        path: str = scope["path"]
        if path.startswith(INTERNAL_PREFIX):
            if path.startswith(RPC_PATH_PREFIX):
                await serve_rpc(forwarder, scope, receive, send)
            elif path == INTERNAL_PREFIX + "health":
                await serve_health(forwarder, scope, receive, send)
            else:
                await PlainTextResponse(f"no forwarder endpoint at {path}\n", status_code=404)(scope, receive, send)
            return
        is_read = scope["method"] in self.read_methods
        if forwarder.is_primary:
            await self.app(scope, receive, self._primary_send(send, is_read))
            return
        if is_read:
            await self.app(scope, receive, self._node_send(send))
            return
        if any(k == h.FORWARDED_BY for k, _ in scope["headers"]):
            # Already forwarded once and still not on the primary: the topology is changing.
            # Another hop could loop; let the client retry once things settle.
            await unavailable(
                f"node {forwarder.topology.node_id} received a forwarded write but is not the primary "
                "(the primary is changing); retry shortly"
            )(scope, receive, send)
            return
        await forward_http(forwarder, scope, receive, send, reason="method")

    def _node_send(self, send: Send) -> Send:
        node = self._node

        async def send_with_node(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("forwarder-node", node.decode())
            await send(message)

        return send_with_node

    def _primary_send(self, send: Send, is_read: bool) -> Send:
        forwarder = self.forwarder
        node = self._node.decode()

        async def send_with_txid(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.append("forwarder-node", node)
                if not is_read:
                    try:
                        txid = await forwarder.commit_position()
                    except Exception:
                        # The write is committed; failing the response now would make the client
                        # think it was not. Say that replicas cannot wait for it instead.
                        logger.exception("could not read the commit position after a write")
                        headers.append("forwarder-stale", "1")
                    else:
                        headers.append("forwarder-txid", str(txid))
            await send(message)

        return send_with_txid

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        forwarder = self.forwarder
        startup_failed = False

        async def receive_and_start() -> Message:
            nonlocal startup_failed
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await forwarder.start()
                except Exception as exc:
                    logger.exception("forwarder failed to start")
                    startup_failed = True
                    await send({"type": "lifespan.startup.failed", "message": f"forwarder failed to start: {exc}"})
                    # Tell the app to shut down; the server exits because startup failed.
                    return {"type": "lifespan.shutdown"}
            return message

        async def send_and_stop(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await forwarder.aclose()
                if startup_failed:
                    return
            if startup_failed and message["type"].startswith("lifespan.startup"):
                return
            await send(message)

        await self.app(scope, receive_and_start, send_and_stop)
