"""HTTP and websocket endpoints of the message board."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio.to_thread
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp
from starlette.websockets import WebSocket, WebSocketDisconnect

from forwarder import Database, Forwarder, ForwarderError, ForwarderMiddleware

from .board import MessageIn, create_schema, delete_message, insert_message, list_messages, post_message


def create_app(forwarder: Forwarder | None = None) -> ASGIApp:
    """The board wrapped in `ForwarderMiddleware`; `forwarder` defaults to one built from `FORWARDER_*`."""
    forwarder = forwarder or Forwarder.from_settings()

    def database() -> Database:
        if forwarder.database is None:
            raise RuntimeError("the example app needs FORWARDER_DATABASE")
        return forwarder.database

    def messages_body() -> dict[str, object]:
        return {
            "messages": [m.model_dump() for m in list_messages(database())],
            "txid": str(forwarder.tracker.position),
            "node": forwarder.topology.node_id,
        }

    def get_messages(request: Request) -> JSONResponse:
        return JSONResponse(messages_body())

    async def create_message(request: Request) -> JSONResponse:
        try:
            message = MessageIn.model_validate_json(await request.body())
        except ValidationError as exc:
            return JSONResponse({"error": _errors(exc)}, status_code=422)
        stored = await anyio.to_thread.run_sync(insert_message, database(), message)
        return JSONResponse(stored.model_dump(), status_code=201)

    async def remove_message(request: Request) -> Response:
        found = await anyio.to_thread.run_sync(delete_message, database(), request.path_params["message_id"])
        return Response(status_code=204 if found else 404)

    async def live(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"type": "hello", "node": forwarder.topology.node_id})
        try:
            while True:
                event = await websocket.receive_json()
                if not isinstance(event, dict) or event.get("type") != "post":
                    await websocket.send_json({"type": "error", "message": "expected {'type': 'post', ...}"})
                    continue
                try:
                    message = MessageIn.model_validate(event)
                    stored = await post_message(message)
                except ValidationError as exc:
                    await websocket.send_json({"type": "error", "message": _errors(exc)})
                    continue
                except ForwarderError as exc:
                    await websocket.send_json({"type": "error", "message": str(exc)})
                    continue
                await websocket.send_json(
                    {"type": "ack", "message": stored.model_dump(), "txid": str(forwarder.tracker.position)}
                )
        except WebSocketDisconnect:
            pass

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if forwarder.is_primary:
            create_schema(database())
        yield

    board = Starlette(
        routes=[
            Route("/api/messages", get_messages, methods=["GET"]),
            Route("/api/messages", create_message, methods=["POST"]),
            Route("/api/messages/{message_id:int}", remove_message, methods=["DELETE"]),
            WebSocketRoute("/live", live),
        ],
        lifespan=lifespan,
    )
    return ForwarderMiddleware(board, forwarder=forwarder)


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
