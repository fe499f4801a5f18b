"""Forwarder's own endpoints under `/_forwarder/`: health and metrics (RPC is in `rpc.server`)."""

from __future__ import annotations

from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from ..metrics import MetricsUnavailable
from ..rpc.server import serve_rpc
from ..rpc.wire import RPC_PATH_PREFIX
from ..runtime import Forwarder
from .classify import INTERNAL_PREFIX

__all__ = ["serve_internal"]


async def serve_internal(forwarder: Forwarder, scope: Scope, receive: Receive, send: Send) -> None:
    path: str = scope["path"]
    response: Response
    if path.startswith(RPC_PATH_PREFIX):
        await serve_rpc(forwarder, scope, receive, send)
        return
    if path == INTERNAL_PREFIX + "health":
        response = await health(forwarder)
    elif path == INTERNAL_PREFIX + "metrics":
        try:
            body, content_type = forwarder.metrics.render()
            response = Response(body, media_type=content_type)
        except MetricsUnavailable as exc:
            response = PlainTextResponse(f"{exc}\n", status_code=501)
    else:
        response = PlainTextResponse(f"no forwarder endpoint at {path}\n", status_code=404)
    await response(scope, receive, send)


async def health(forwarder: Forwarder) -> JSONResponse:
    """`GET /_forwarder/health`: 200 when ready and within `max_lag`, else 503, with the reasons."""
    topology = forwarder.topology
    txid = await forwarder.live_position() if forwarder.started else forwarder.tracker.position
    lag = forwarder.lag()
    problems = []
    if not forwarder.started:
        problems.append("starting")
    elif not forwarder.engine.restored:
        problems.append("restoring: the follower has not restored this replica's database yet")
    if (problem := forwarder.engine.problem) is not None:
        problems.append(problem)
    if forwarder.startup_problem is not None:
        problems.append(forwarder.startup_problem)
    if lag > forwarder.max_lag:
        problems.append(f"replica lag {lag:.1f}s exceeds max_lag {forwarder.max_lag:g}s")
    body = {
        "status": "ok" if not problems else "unhealthy",
        "problems": problems,
        "node": topology.node_id,
        "region": topology.region,
        "role": topology.role.value,
        "primary": topology.primary_id,
        "primary_region": topology.primary_region,
        "primary_url": topology.primary_url,
        "engine": forwarder.engine.name,
        "txid": str(txid),
        "lag": round(lag, 3),
        "waiting": forwarder.tracker.waiting,
    }
    return JSONResponse(body, status_code=503 if problems else 200)
