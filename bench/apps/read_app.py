"""The read-path benchmark's app: the same handlers with and without `ForwarderMiddleware`.

`BENCH_WRAPPED=1` wraps it (as a Litestream replica following `BENCH_DATABASE`); `0` serves it bare.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from forwarder import Forwarder, ForwarderMiddleware, Role, Topology
from forwarder.engines.litestream import LitestreamEngine

DATABASE = Path(os.environ.get("BENCH_DATABASE", "bench.db")).absolute()


def read_rows(request: Request) -> Response:
    # What a real replica read does: a fresh read-only connection, a query, close.
    conn = sqlite3.connect(f"{DATABASE.as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT id, text FROM items ORDER BY id DESC LIMIT 20").fetchall()
    finally:
        conn.close()
    return JSONResponse({"items": rows})


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello")


def create() -> ASGIApp:
    app = Starlette(routes=[Route("/rows", read_rows), Route("/hello", hello)])
    if os.environ.get("BENCH_WRAPPED") != "1":
        return app
    forwarder = Forwarder(
        engine=LitestreamEngine(DATABASE, Role.REPLICA),
        topology=Topology("bench-replica", "ams", Role.REPLICA, primary_url="http://127.0.0.1:9", primary_id="p"),
        secret="bench",
    )
    return ForwarderMiddleware(app, forwarder=forwarder)


app = create()
