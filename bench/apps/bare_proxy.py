"""The baseline for one extra hop: the smallest reverse proxy on the same stack as forwarder's.

uvicorn receives the request, one pooled `httpx.AsyncClient` sends it to `BENCH_UPSTREAM` and the
response is passed back: no classification, no txid, no waiting. Forwarded writes are compared with
it to separate what any Python hop costs from what forwarder adds.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:9")
_clients: list[httpx.AsyncClient] = []


async def relay(request: Request) -> Response:
    upstream = await _clients[0].request(
        request.method, request.url.path, content=await request.body(), headers={"content-type": "text/plain"}
    )
    return Response(upstream.content, status_code=upstream.status_code, media_type="application/json")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with httpx.AsyncClient(base_url=UPSTREAM, timeout=10) as client:
        _clients.append(client)
        yield
        _clients.clear()


app = Starlette(routes=[Route("/{path:path}", relay, methods=["GET", "POST"])], lifespan=lifespan)
