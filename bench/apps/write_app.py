"""The write benchmarks' app: one table, a POST handler, and an `@primary_only` function over a websocket.

Kept minimal so the figures are forwarder's and the engine's, not an app's. Configured from
`FORWARDER_*` like any app (the dev cluster sets them).

- `POST /write` with a text body inserts a row; on a replica the middleware forwards it.
- `GET /write/<id>` reads the row back (404 if this node's copy does not hold it).
- `GET /outcomes` on a forwarder primary: how its covering check answered, the keeper's writes, and its txid.
- `/rpc` (websocket): each text message is stored through `@primary_only` and answered with its id.

`BENCH_BARE=1` serves the same handlers without forwarder, on `BENCH_DATABASE` (the primary-cost
benchmark's baselines); `BENCH_COMMIT=sync` makes a forwarder primary ask `POST /sync` for every
write, as before the covering check (`forwarder.engines.litestream_position`); `BENCH_COMMIT=exact`
gives direct writes the txid a forwarded write gets (the covering check that waits out an active
sync, as before `promise_position`); `BENCH_COMMIT=prompt` gives forwarded writes the prompt
txid direct writes get (`newest + 2`); `BENCH_COMMIT=busy` gives direct writes the txid from local
files, with the keeper idle as on a primary whose writes keep coming (`bench.write_instructions`
under valgrind); `BENCH_COMMIT=none` gives every write txid 1 without asking
Litestream (not correct: it shows what the txid costs).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp
from starlette.websockets import WebSocket, WebSocketDisconnect

from forwarder import Database, Forwarder, ForwarderMiddleware, Txid, primary_only
from forwarder.context import current_forwarder
from forwarder.engines import litestream_keeper

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
    if forwarder is not None and os.environ.get("BENCH_COMMIT") == "sync":
        forwarder.engine.covering = None  # type: ignore[attr-defined]  # LitestreamEngine only
    if forwarder is not None and os.environ.get("BENCH_COMMIT") == "none":

        async def no_txid() -> Txid:
            return Txid(1)

        forwarder.engine.commit_position = no_txid  # type: ignore[method-assign]
        forwarder.engine.promise_position = no_txid  # type: ignore[method-assign]
    if forwarder is not None and os.environ.get("BENCH_COMMIT") == "exact":
        forwarder.engine.promise_position = forwarder.engine.commit_position  # type: ignore[method-assign]
    if forwarder is not None and os.environ.get("BENCH_COMMIT") in ("status", "files", "busy"):
        # status: ask sync-status once for every direct write; files, busy: never (from local files only).
        gap = 0.0 if os.environ["BENCH_COMMIT"] == "status" else float("inf")
        forwarder.engine.quiet_gap = gap  # type: ignore[attr-defined]  # LitestreamEngine only
    if forwarder is not None and os.environ.get("BENCH_COMMIT") == "busy":
        # Under valgrind writes come over 10 ms apart, and the keeper would write after each: a second
        # of quiet keeps it to what it does while writes keep coming (waits, and looks at nothing).
        litestream_keeper.QUIET = 1.0
    if forwarder is not None and os.environ.get("BENCH_COMMIT") == "prompt":
        commit_position = forwarder.commit_position

        async def always_prompt(*, prompt: bool = False) -> Txid:
            return await commit_position(prompt=True)

        forwarder.commit_position = always_prompt  # type: ignore[method-assign]
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
        engine: Any = forwarder.engine if forwarder is not None else None
        covering, keeper = getattr(engine, "covering", None), getattr(engine, "keeper", None)
        return JSONResponse(
            {
                "outcomes": dict(covering.outcomes) if covering is not None else {},
                "keeper writes": keeper.bumps if keeper is not None else 0,
                "txid": int(forwarder.tracker.position) if forwarder is not None else 0,
            }
        )

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
