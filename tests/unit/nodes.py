"""Two forwarder nodes in one process: a primary and a replica on the memory engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import httpx
from starlette.types import ASGIApp

from forwarder import Forwarder, ForwarderMiddleware, MemoryEngine, MemoryLog, Registry, Role, Topology
from forwarder.channel.client import Connection, Headers
from forwarder.channel.transport import ChannelTransport, signed_handshake
from forwarder.policy import RoutingPolicy

from .channel_link import MemoryLink

SECRET = "test-secret"

CHANNEL_BY_DEFAULT = False
"""What `two_nodes(channel=None)` does: a test module's fixture sets it to run its tests both ways."""


@dataclass
class Nodes:
    log: MemoryLog
    primary: Forwarder
    replica: Forwarder
    replica_engine: MemoryEngine
    primary_app: ASGIApp
    replica_app: ASGIApp
    links: list[MemoryLink] = field(default_factory=list)
    """The node channels the replica opened (with `channel=True`), oldest first."""

    def client(self, app: ASGIApp) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@asynccontextmanager
async def two_nodes(
    make_app: Callable[[], ASGIApp],
    *,
    registry: Registry | None = None,
    primary_transport: httpx.AsyncBaseTransport | None = None,
    replication_timeout: float = 2.0,
    policy: RoutingPolicy | None = None,
    primary_region: str | None = "fra",
    channel: bool | None = None,
) -> AsyncIterator[Nodes]:
    """Start a primary and a replica around `make_app()`; the replica reaches the primary in-process
    (with `channel`, over node channels on in-memory websockets, HTTP for what cannot go on them)."""
    registry = registry or Registry()
    log = MemoryLog()
    primary = Forwarder(
        engine=MemoryEngine(log, Role.PRIMARY),
        topology=Topology("node-p", "fra", Role.PRIMARY, primary_id="node-p"),
        secret=SECRET,
        registry=registry,
        policy=policy,
    )
    primary_app = ForwarderMiddleware(make_app(), forwarder=primary)
    links: list[MemoryLink] = []

    async def connect(url: str, headers: Headers, timeout: float) -> Connection:
        link = MemoryLink(primary_app, headers)
        links.append(link)
        return await link.connect()

    http = primary_transport or httpx.ASGITransport(app=primary_app)
    # A test that gives its own transport decides how the primary is (not) reached.
    if (CHANNEL_BY_DEFAULT and primary_transport is None) if channel is None else channel:
        handshake = partial(signed_handshake, SECRET.encode(), "node-r")
        http = ChannelTransport(http, handshake=handshake, connect=connect)
    replica_engine = MemoryEngine(log, Role.REPLICA, primary_id="node-p")
    replica = Forwarder(
        engine=replica_engine,
        topology=Topology(
            "node-r",
            "ams",
            Role.REPLICA,
            primary_url="http://primary",
            primary_id="node-p",
            primary_region=primary_region,
        ),
        secret=SECRET,
        registry=registry,
        replication_timeout=replication_timeout,
        policy=policy,
        transport=http,
    )
    replica_app = ForwarderMiddleware(make_app(), forwarder=replica)
    async with primary, replica:
        yield Nodes(log, primary, replica, replica_engine, primary_app, replica_app, links)
