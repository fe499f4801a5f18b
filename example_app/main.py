"""HTTP and websocket endpoints of the message board."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs

import anyio
import anyio.to_thread
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp
from starlette.websockets import WebSocket

from forwarder import Database, Forwarder, ForwarderMiddleware

from .board import MessageIn, create_schema, delete_message, insert_message, list_messages
from .live import Broadcaster, Frame, describe, serve_session
from .render import NodeStatus, render_live, render_page

STATIC_DIR = Path(__file__).parent / "static"


def _asset_url(name: str) -> str:
    # The content hash in the URL lets browsers cache the file and still see each new version.
    digest = hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:12]
    return f"/static/{name}?v={digest}"


def create_app(forwarder: Forwarder | None = None) -> ASGIApp:
    """The board wrapped in `ForwarderMiddleware`; `forwarder` defaults to one built from `FORWARDER_*`."""
    forwarder = forwarder or Forwarder.from_settings()
    script_url, style_url = _asset_url("app.js"), _asset_url("app.css")

    def database() -> Database:
        if forwarder.database is None:
            raise RuntimeError("the example app needs FORWARDER_DATABASE")
        return forwarder.database

    async def render_frame() -> Frame:
        # The position is read before the rows, so the rows hold at least what the txid says.
        status = NodeStatus.of(forwarder)
        html = await anyio.to_thread.run_sync(lambda: render_live(status, list_messages(database())))
        return Frame(txid=status.txid, html=html, lag=status.lag, node=status.node_id)

    broadcaster = Broadcaster(forwarder, render_frame)
    # Registered before the forwarder starts (the middleware starts it in the lifespan), so no
    # position change is missed; `notify` does nothing until the broadcaster runs.
    forwarder.engine.on_position(broadcaster.notify)

    def messages_body() -> dict[str, object]:
        txid = str(forwarder.tracker.position)
        return {
            "messages": [m.model_dump() for m in list_messages(database())],
            "txid": txid,
            "node": forwarder.topology.node_id,
        }

    def get_messages(request: Request) -> JSONResponse:
        return JSONResponse(messages_body())

    async def create_message(request: Request) -> JSONResponse:
        try:
            message = MessageIn.model_validate_json(await request.body())
        except ValidationError as exc:
            return JSONResponse({"error": describe(exc)}, status_code=422)
        stored = await anyio.to_thread.run_sync(insert_message, database(), message)
        return JSONResponse(stored.model_dump(), status_code=201)

    async def remove_message(request: Request) -> Response:
        found = await anyio.to_thread.run_sync(delete_message, database(), request.path_params["message_id"])
        return Response(status_code=204 if found else 404)

    async def page(
        *, notice: str | None = None, author: str = "", text: str = "", status_code: int = 200
    ) -> HTMLResponse:
        status = NodeStatus.of(forwarder)
        messages = await anyio.to_thread.run_sync(list_messages, database())
        html = render_page(
            status,
            messages,
            script_url=script_url,
            style_url=style_url,
            notice=notice,
            author=author,
            text=text,
        )
        return HTMLResponse(html, status_code=status_code, headers={"cache-control": "no-cache"})

    async def index(request: Request) -> HTMLResponse:
        return await page()

    async def submit_form(request: Request) -> Response:
        # The page's form without JavaScript. A POST, so on a replica the middleware runs it on
        # the primary and answers only once this replica holds it: the redirected GET shows it.
        fields = parse_qs((await request.body()).decode("utf-8", errors="replace"), keep_blank_values=True)
        author, text = fields.get("author", [""])[0], fields.get("text", [""])[0]
        try:
            message = MessageIn(author=author, text=text)
        except ValidationError as exc:
            return await page(notice=describe(exc), author=author, text=text, status_code=422)
        await anyio.to_thread.run_sync(insert_message, database(), message)
        return RedirectResponse("/", status_code=303)

    async def live(websocket: WebSocket) -> None:
        await serve_session(websocket, forwarder, broadcaster)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if forwarder.is_primary:
            create_schema(database())
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(broadcaster.run)
            yield
            tasks.cancel_scope.cancel()

    board = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/", submit_form, methods=["POST"]),
            Route("/api/messages", get_messages, methods=["GET"]),
            Route("/api/messages", create_message, methods=["POST"]),
            Route("/api/messages/{message_id:int}", remove_message, methods=["DELETE"]),
            WebSocketRoute("/live", live),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        lifespan=lifespan,
    )
    return ForwarderMiddleware(board, forwarder=forwarder)
