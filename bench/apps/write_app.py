"""The write benchmarks' app: one table, a POST handler, and an `@primary_only` function over a websocket.

Kept minimal so the figures are forwarder's and the engine's, not an app's. Configured from
`FORWARDER_*` like any app (the dev cluster sets them).

- `POST /write` with a text body inserts a row; on a replica the middleware forwards it.
- `GET /write/<id>` reads the row back (404 if this node's copy does not hold it).
- `GET /outcomes` on a forwarder primary: how its covering check answered, the keeper's writes, and its txid.
- `/rpc` (websocket): each text message is stored through `@primary_only` and answered with its id.

`BENCH_BARE=1` serves the same handlers without forwarder, on `BENCH_DATABASE` (the primary-cost
benchmark's baselines); `BENCH_COMMIT` sets how a forwarder primary finds its txids
(`bench.apps.commit_modes`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp
from starlette.websockets import WebSocket, WebSocketDisconnect

from bench.apps.commit_modes import apply_commit_mode, outcomes as commit_outcomes
from forwarder import Database, Forwarder, ForwarderMiddleware, primary_only
from forwarder.context import current_forwarder

SCHEMA = "CREATE TABLE IF NOT EXISTS writes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)"


def insert(database: Database, text: str) -> int:
    with database.write() as conn:
        row_id = conn.execute("INSERT INTO writes (text) VALUES (?)", (text,)).lastrowid
    assert row_id is not None
    return row_id


def database_of(forwarder: Forwarder | None) -> Database:
    if forwarder is None or forwarder.database is None:
        raise RuntimeError("the write benchmark app needs FORWARDER_DATABASE")
    return forwarder.database


@primary_only
async def store(text: str) -> int:
    """Insert a row on the primary; on a replica, return once the replica holds it."""
    return await anyio.to_thread.run_sync(insert, database_of(current_forwarder()), text)


def create() -> ASGIApp:
    bare = os.environ.get("BENCH_BARE") == "1"
    forwarder = None if bare else Forwarder.from_settings()
    database = Database(os.environ.get("BENCH_DATABASE", "bench.db"), is_primary=lambda: True) if bare else None
    if forwarder is not None:
        apply_commit_mode(forwarder)
    is_primary = bare or (forwarder is not None and forwarder.is_primary)

    async def write(request: Request) -> JSONResponse:
        text = (await request.body()).decode("utf-8", errors="replace")
        row_id = await anyio.to_thread.run_sync(insert, database or database_of(forwarder), text)
        return JSONResponse({"id": row_id}, status_code=201)

    async def read(request: Request) -> JSONResponse:
        def select() -> tuple[str] | None:
            with (database or database_of(forwarder)).read() as conn:
                row: tuple[str] | None = conn.execute(
                    "SELECT text FROM writes WHERE id = ?", (request.path_params["id"],)
                ).fetchone()
                return row

        row = await anyio.to_thread.run_sync(select)
        return JSONResponse({"text": row[0]} if row else {"missing": True}, status_code=200 if row else 404)

    async def outcomes(request: Request) -> JSONResponse:
        return JSONResponse(commit_outcomes(forwarder))

    async def rpc(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                text = await websocket.receive_text()
                await websocket.send_json({"id": await store(text)})
        except WebSocketDisconnect:
            pass

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if is_primary:
            with (database or database_of(forwarder)).write() as conn:
                conn.execute(SCHEMA)
        yield

    routes = [
        Route("/write", write, methods=["POST"]),
        Route("/write/{id:int}", read),
        Route("/outcomes", outcomes),
        WebSocketRoute("/rpc", rpc),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    return app if forwarder is None else ForwarderMiddleware(app, forwarder=forwarder)


app = create()
