"""Forwarder's own endpoints under `/_forwarder/`: health (and the RPC endpoint, in `rpc.server`)."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from ..runtime import Forwarder

__all__ = ["INTERNAL_PREFIX", "serve_health"]

INTERNAL_PREFIX = "/_forwarder/"


async def serve_health(forwarder: Forwarder, scope: Scope, receive: Receive, send: Send) -> None:
    """`GET /_forwarder/health`: who this node is, who the primary is, and where replication stands."""
    topology = forwarder.topology
    body = {
        "status": "ok" if forwarder.started else "starting",
        "node": topology.node_id,
        "region": topology.region,
        "role": topology.role.value,
        "primary": topology.primary_id,
        "primary_url": topology.primary_url,
        "engine": forwarder.engine.name,
        "txid": str(forwarder.tracker.position),
        "waiting": forwarder.tracker.waiting,
    }
    await JSONResponse(body, status_code=200 if forwarder.started else 503)(scope, receive, send)
