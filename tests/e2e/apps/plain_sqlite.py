"""An app on the standard library's `sqlite3` with a plain, writable path: no forwarder helper.

It is the setup forwarder cannot make safe by construction: every node opens the file
read-write, and `GET /visit/<id>` writes (a visit log), so on a replica the write lands in the
follower's own file. The middleware must notice, answer with the primary's result instead, and
the replica must be restored.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from forwarder import Forwarder, ForwarderMiddleware

DATABASE = os.environ["FORWARDER_DATABASE"]

forwarder = Forwarder.from_settings()


def connect() -> sqlite3.Connection:
    return sqlite3.connect(DATABASE, timeout=5)


async def visit(request: Request) -> JSONResponse:
    visit_id = request.path_params["visit_id"]
    with closing(connect()) as db, db:
        db.execute("INSERT INTO visits (id, node) VALUES (?, ?)", (visit_id, forwarder.topology.node_id))
        count = db.execute("SELECT count(*) FROM visits").fetchone()[0]
    return JSONResponse({"id": visit_id, "visits": count})


async def visits(request: Request) -> JSONResponse:
    with closing(connect()) as db:
        rows = db.execute("SELECT id FROM visits ORDER BY id").fetchall()
    return JSONResponse({"ids": [row[0] for row in rows]})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    if forwarder.is_primary:
        with closing(connect()) as db, db:
            db.execute("CREATE TABLE IF NOT EXISTS visits (id TEXT PRIMARY KEY, node TEXT NOT NULL)")
    # Every node checks its database at start-up; on a replica whose follower has not restored
    # yet, this would leave an empty file behind (sqlite3 creates it) and the restore would fail.
    with closing(connect()) as db:
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    print(f"app started: {tables} tables", flush=True)
    yield


app = ForwarderMiddleware(
    Starlette(routes=[Route("/visit/{visit_id}", visit), Route("/visits", visits)], lifespan=lifespan),
    forwarder=forwarder,
)
