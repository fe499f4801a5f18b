"""The chaos scenarios' app: writes carry a client-chosen id, reads count it, so lost and doubled
writes show up. Every database access goes through `forwarder.database` (the access rule).

- `POST /items/{id}`: a write; a replica forwards it (proxy, or fly-replay through the edge);
- `POST /rpc/items/{id}`: served where it lands (a passthrough path); the insert is a
  `@primary_only` call, which a replica sends to the primary over RPC;
- `GET /items/{id}`: how many rows have that id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from forwarder import Forwarder, ForwarderMiddleware, ReplicationTimeout, primary_only
from forwarder.database import Database

forwarder = Forwarder.from_settings()


def _database() -> Database:
    assert forwarder.database is not None
    return forwarder.database


def _schema() -> None:
    with _database().write() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS items (id TEXT NOT NULL)")


def _insert(item: str) -> None:
    with _database().write() as conn:
        conn.execute("INSERT INTO items (id) VALUES (?)", (item,))


def _count(item: str) -> int:
    with _database().read() as conn:
        return int(conn.execute("SELECT count(*) FROM items WHERE id = ?", (item,)).fetchone()[0])


async def write(request: Request) -> JSONResponse:
    item = request.path_params["item"]
    await anyio.to_thread.run_sync(_insert, item)
    return JSONResponse({"id": item})


@primary_only
async def add_item(item: str) -> str:
    """The RPC write: runs on the primary wherever it is called."""
    await anyio.to_thread.run_sync(_insert, item)
    return item


async def write_by_rpc(request: Request) -> JSONResponse:
    item = request.path_params["item"]
    try:
        await add_item(item)
    except ReplicationTimeout as exc:
        if not exc.committed:
            raise
        # Committed on the primary, this replica is behind: the response's cookie makes the next read wait.
        return JSONResponse({"id": item}, headers={"forwarder-stale": "1"})
    return JSONResponse({"id": item})


async def read(request: Request) -> JSONResponse:
    return JSONResponse({"count": await anyio.to_thread.run_sync(_count, request.path_params["item"])})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    if forwarder.is_primary:
        await anyio.to_thread.run_sync(_schema)
    yield


app = ForwarderMiddleware(
    Starlette(
        routes=[
            Route("/items/{item}", write, methods=["POST"]),
            Route("/rpc/items/{item}", write_by_rpc, methods=["POST"]),
            Route("/items/{item}", read, methods=["GET"]),
        ],
        lifespan=lifespan,
    ),
    forwarder=forwarder,
    policy=replace(forwarder.policy, passthrough=("/rpc/*",)),
)
