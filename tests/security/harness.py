"""In-process nodes for the security tests: a primary and a replica around a ledger app.

The ledger records every write the primary's app executes and every `@primary_only` call; the
replica reaches the primary through a transport that records every request it sends, so a test
can assert that nothing was executed and nothing was sent anywhere but the primary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from forwarder import Forwarder, ForwarderMiddleware, MemoryEngine, MemoryLog, Registry, Role, Topology
from forwarder.policy import RoutingPolicy
from forwarder.security import SecurityPolicy

SECRET = "security-test-secret"
PRIMARY_URL = "http://primary.internal:8080"


@dataclass(repr=False)
class Ledger:
    """What the primary's app executed, and the path each request reached it with."""

    log: MemoryLog
    writes: list[tuple[str, str, bytes]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    record: Callable[[str], Awaitable[str]] | None = None


class RecordingTransport(httpx.AsyncBaseTransport):
    """Passes requests to `inner` and records each one (what the replica sent, and where)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.sent: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return await self.inner.handle_async_request(request)


def ledger_app(ledger: Ledger, registry: Registry, *, primary: bool) -> ASGIApp:
    record = ledger.record
    assert record is not None

    async def write(request: Request) -> Response:
        try:
            body = await request.body()
        except ClientDisconnect:  # a well-behaved app: the client went away, nothing to do
            return Response(status_code=400)
        ledger.writes.append((request.method, request.url.path, body))
        ledger.log.commit()
        return JSONResponse({"ok": True}, status_code=201)

    async def read(request: Request) -> Response:
        return JSONResponse({"read": True})

    async def call(request: Request) -> Response:
        await record(request.url.path)
        return PlainTextResponse("called", status_code=201)

    app = Starlette(
        routes=[
            Route("/api/write", write, methods=["POST", "PUT", "PATCH", "DELETE"]),
            Route("/api/read", read),
            Route("/api/call", call, methods=["POST"]),
        ]
    )
    if not primary:
        return app

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            ledger.paths.append(scope["path"])
            ledger.headers.append({k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]})
        await app(scope, receive, send)

    return recording


def ledger_registry(ledger: Ledger) -> Registry:
    registry = Registry()

    @registry.primary_only(name="record")
    async def record(what: str) -> str:
        ledger.calls.append(what)
        ledger.log.commit()
        return what

    ledger.record = record
    return registry


@dataclass(repr=False)
class Nodes:
    ledger: Ledger
    primary: Forwarder
    replica: Forwarder
    replica_engine: MemoryEngine
    primary_app: ASGIApp
    replica_app: ASGIApp
    transport: RecordingTransport

    def __repr__(self) -> str:  # short: hypothesis prints its fixtures with each failing example
        return f"Nodes({self.primary.policy.mode}, on_lag={self.primary.policy.on_lag})"

    @property
    def sent(self) -> list[httpx.Request]:
        return self.transport.sent

    def client(self, app: ASGIApp) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")

    def nothing_happened(self) -> bool:
        """No write, no call, nothing committed, nothing sent to the primary."""
        ledger = self.ledger
        return not ledger.writes and not ledger.calls and ledger.log.head == 0 and not self.sent


def primary_node(
    ledger: Ledger,
    registry: Registry,
    *,
    policy: RoutingPolicy | None = None,
    security: SecurityPolicy | None = None,
    database: Path | None = None,
    secret: str | None = SECRET,
) -> tuple[Forwarder, ASGIApp]:
    primary = Forwarder(
        engine=MemoryEngine(ledger.log, Role.PRIMARY),
        topology=Topology("node-p", "fra", Role.PRIMARY, primary_id="node-p"),
        secret=secret,
        registry=registry,
        policy=policy,
        security=security,
        database=str(database) if database else None,
    )
    return primary, ForwarderMiddleware(ledger_app(ledger, registry, primary=True), forwarder=primary)


@asynccontextmanager
async def nodes(
    *,
    policy: RoutingPolicy | None = None,
    security: SecurityPolicy | None = None,
    replication_timeout: float = 0.5,
    connect_timeout: float = 2.0,
    auto_apply: bool = True,
) -> AsyncIterator[Nodes]:
    """A primary and a replica (memory engine); replication is immediate unless `auto_apply=False`."""
    ledger = Ledger(MemoryLog(auto_apply=auto_apply))
    registry = ledger_registry(ledger)
    primary, primary_app = primary_node(ledger, registry, policy=policy, security=security)
    transport = RecordingTransport(httpx.ASGITransport(app=primary_app))
    replica_engine = MemoryEngine(ledger.log, Role.REPLICA, primary_id="node-p")
    replica = Forwarder(
        engine=replica_engine,
        topology=Topology(
            "node-r", "ams", Role.REPLICA, primary_url=PRIMARY_URL, primary_id="node-p", primary_region="fra"
        ),
        secret=SECRET,
        registry=registry,
        replication_timeout=replication_timeout,
        connect_timeout=connect_timeout,
        policy=policy,
        security=security,
        transport=transport,
    )
    replica_app = ForwarderMiddleware(ledger_app(ledger, registry, primary=False), forwarder=replica)
    async with primary, replica:
        yield Nodes(ledger, primary, replica, replica_engine, primary_app, replica_app, transport)
