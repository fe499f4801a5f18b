"""A small app exercising every middleware path, run by the e2e tests as real uvicorn nodes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections.abc import AsyncIterator

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp
from starlette.websockets import WebSocket

from forwarder import Database, Forwarder, ForwarderMiddleware
from forwarder.endpoints import primary_endpoint

SCHEMA = "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, value TEXT NOT NULL)"


def create_app() -> ASGIApp:
    forwarder = Forwarder.from_settings()
    node = forwarder.topology.node_id

    def db() -> Database:
        assert forwarder.database is not None
        return forwarder.database

    def insert(kind: str, value: str) -> int:
        with db().write() as conn:
            conn.execute(SCHEMA)
            row_id = conn.execute("INSERT INTO items (kind, value) VALUES (?, ?)", (kind, value)).lastrowid
        assert row_id is not None
        return row_id

    def items() -> list[dict[str, object]]:
        with db().read() as conn:
            try:
                return [dict(r) for r in conn.execute("SELECT id, kind, value FROM items ORDER BY id")]
            except Exception as exc:
                if "no such table" in str(exc):
                    return []
                raise

    async def list_items(request: Request) -> Response:
        found = await anyio.to_thread.run_sync(items)
        return JSONResponse({"node": node, "items": found, "txid": str(forwarder.tracker.position)})

    async def add_item(request: Request) -> Response:
        body = await request.json()
        row_id = await anyio.to_thread.run_sync(insert, "item", str(body["value"]))
        # ?delay=<seconds>: a slow request that has written already (its row committed) when it answers.
        await asyncio.sleep(float(request.query_params.get("delay", "0")))
        return JSONResponse({"node": node, "id": row_id}, status_code=201)

    async def touch(request: Request) -> Response:
        # A GET that writes: on a replica the read-only error sends it to the primary.
        row_id = await anyio.to_thread.run_sync(insert, "touch", request.query_params.get("value", ""))
        return JSONResponse({"node": node, "id": row_id})

    async def upload(request: Request) -> Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
        row_id = await anyio.to_thread.run_sync(insert, "upload", f"{size}:{digest.hexdigest()}")
        return JSONResponse({"node": node, "id": row_id, "size": size, "sha256": digest.hexdigest()}, status_code=201)

    async def events(request: Request) -> Response:
        count = int(request.query_params.get("count", "5"))

        async def stream() -> AsyncIterator[bytes]:
            for i in range(count):
                yield f"data: {json.dumps({'i': i, 'node': node, 'sent': time.time()})}\n\n".encode()
                await asyncio.sleep(0.2)

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def blob(request: Request) -> Response:
        # A large streamed response: `size` bytes of `random.Random(seed)`, in 16 KiB chunks.
        size, seed = int(request.query_params.get("size", "0")), request.query_params.get("seed", "")
        data = random.Random(seed).randbytes(size)

        async def stream() -> AsyncIterator[bytes]:
            for offset in range(0, size, 16 * 1024):
                yield data[offset : offset + 16 * 1024]
                await asyncio.sleep(0)

        return StreamingResponse(stream(), media_type="application/octet-stream")

    @primary_endpoint
    async def primary_socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"node": node})
        async for text in websocket.iter_text():
            await websocket.send_text(f"{node}:{text}")

    async def any_socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"node": node})
        await websocket.close()

    app = Starlette(
        routes=[
            Route("/items", list_items, methods=["GET"]),
            Route("/items", add_item, methods=["POST"]),
            Route("/touch", touch),
            Route("/upload", upload, methods=["POST"]),
            Route("/events", events, methods=["GET", "POST"]),
            Route("/blob", blob, methods=["GET", "POST"]),
            WebSocketRoute("/ws/primary", primary_socket),
            WebSocketRoute("/ws/always", any_socket),
            WebSocketRoute("/ws/local", any_socket),
        ]
    )
    return ForwarderMiddleware(app, forwarder=forwarder)


app = create_app()
