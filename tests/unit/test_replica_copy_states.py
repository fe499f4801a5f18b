"""A replica whose copy is not usable: written by the app, or not restored yet."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from forwarder import Forwarder, ForwarderMiddleware, MemoryEngine, MemoryLog, Role, Topology, Txid
from forwarder.context import current_forwarder

from .asgi import body_of, call, headers_of, http_scope, status_of

pytestmark = pytest.mark.anyio


class CopyEngine(MemoryEngine):
    """A memory replica whose copy can be written behind its back, or be still restoring."""

    def __init__(self, log: MemoryLog) -> None:
        super().__init__(log, Role.REPLICA, primary_id="node-p")
        self.writes = 0
        self.damaged: str | None = None
        self.is_restored = True

    @property
    def restored(self) -> bool:
        return self.is_restored

    @property
    def problem(self) -> str | None:
        return self.damaged

    def local_writes(self, *, look: bool = True) -> int:
        return self.writes


def make_app(engines: dict[str, CopyEngine], started: list[str], name: str) -> Starlette:
    async def visit(request: Request) -> Response:
        forwarder = current_forwarder()
        assert forwarder is not None
        node = forwarder.topology.node_id
        if node in engines:
            engines[node].writes += 1  # the app wrote to the replica's file on a writable URL
        return JSONResponse({"node": node, "body": (await request.body()).decode()})

    async def stream(request: Request) -> Response:
        forwarder = current_forwarder()
        assert forwarder is not None
        node = forwarder.topology.node_id

        async def chunks() -> object:
            yield b"first "
            if node in engines:
                engines[node].writes += 1
            yield b"last"

        return StreamingResponse(chunks())  # type: ignore[arg-type]

    async def read(request: Request) -> Response:
        forwarder = current_forwarder()
        assert forwarder is not None
        return PlainTextResponse(forwarder.topology.node_id)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started.append(name)
        yield

    return Starlette(
        routes=[Route("/visit", visit, methods=["GET", "POST"]), Route("/stream", stream), Route("/r", read)],
        lifespan=lifespan,
    )


def build(log: MemoryLog, engine: CopyEngine, started: list[str]) -> tuple[Forwarder, Forwarder, object, object]:
    engines = {"node-r": engine}
    primary = Forwarder(
        engine=MemoryEngine(log, Role.PRIMARY),
        topology=Topology("node-p", "fra", Role.PRIMARY, primary_id="node-p"),
        secret="s",
    )
    primary_app = ForwarderMiddleware(make_app(engines, started, "node-p"), forwarder=primary)
    replica = Forwarder(
        engine=engine,
        topology=Topology("node-r", "ams", Role.REPLICA, primary_url="http://primary", primary_id="node-p"),
        secret="s",
        replication_timeout=1.0,
        transport=httpx.ASGITransport(app=primary_app),
    )
    return primary, replica, primary_app, ForwarderMiddleware(make_app(engines, started, "node-r"), forwarder=replica)


async def test_a_response_of_a_request_that_wrote_locally_is_replaced_by_the_primarys() -> None:
    log = MemoryLog(auto_apply=True)
    engine = CopyEngine(log)
    primary, replica, _, replica_app = build(log, engine, [])
    async with primary, replica:
        sent = await call(replica_app, http_scope("GET", "/visit"), b"payload")  # type: ignore[arg-type]
    assert status_of(sent) == 200
    assert json.loads(body_of(sent)) == {"node": "node-p", "body": "payload"}
    assert headers_of(sent)["forwarder-txid"]  # a write on the primary: the client can read it back


async def test_a_local_write_after_the_response_started_breaks_the_response() -> None:
    log = MemoryLog(auto_apply=True)
    engine = CopyEngine(log)
    primary, replica, _, replica_app = build(log, engine, [])
    async with primary, replica:
        with pytest.raises(Exception, match="will never reach the primary"):
            await call(replica_app, http_scope("GET", "/stream"))  # type: ignore[arg-type]


@pytest.mark.parametrize(("state", "problem"), [("modified", "database modified: ..."), ("restoring", None)])
async def test_reads_go_to_the_primary_while_the_copy_is_unusable(state: str, problem: str | None) -> None:
    log = MemoryLog(auto_apply=True)
    engine = CopyEngine(log)
    engine.damaged = problem
    engine.is_restored = state != "restoring"
    primary, replica, _, replica_app = build(log, engine, [])
    async with primary, replica:
        sent = await call(replica_app, http_scope("GET", "/r"))  # type: ignore[arg-type]
        health = await call(replica_app, http_scope("GET", "/_forwarder/health"))  # type: ignore[arg-type]
    assert status_of(sent) == 200 and body_of(sent) == b"node-p"
    assert headers_of(sent)["forwarder-forwarded"] == ["proxy"]
    assert status_of(health) == 503
    assert state.encode() in body_of(health) if state == "restoring" else b"database modified" in body_of(health)


async def test_the_apps_startup_waits_for_the_first_restore_while_health_says_restoring() -> None:
    log = MemoryLog(auto_apply=True)
    engine = CopyEngine(log)
    engine.is_restored = False
    started: list[str] = []
    primary, replica, primary_app, replica_app = build(log, engine, started)
    async with primary:
        with anyio.fail_after(10):
            async with LifespanManager(replica_app):  # type: ignore[arg-type]
                # The server was told the app started, so it serves; the app's own start-up has not run.
                assert started == []
                health = await call(replica_app, http_scope("GET", "/_forwarder/health"))  # type: ignore[arg-type]
                assert status_of(health) == 503 and b"restoring" in body_of(health)
                engine.is_restored = True
                log.commit()  # the follower's first restore publishes a position
                while started != ["node-r"]:
                    await asyncio.sleep(0.01)
                health = await call(replica_app, http_scope("GET", "/_forwarder/health"))  # type: ignore[arg-type]
                assert status_of(health) == 200
                sent = await call(replica_app, http_scope("GET", "/r"))  # type: ignore[arg-type]
                assert body_of(sent) == b"node-r"
    assert replica.tracker.position == Txid(1)


def test_what_the_hot_path_asks_an_engine_follows_its_restored_problem_and_local_writes() -> None:
    log = MemoryLog()
    plain, copy = MemoryEngine(log, Role.REPLICA, primary_id="node-p"), CopyEngine(log)
    # An engine whose file the app cannot write is never looked at while a response goes out.
    assert plain.write_counter is None and plain.unreadable is None
    counter = copy.write_counter
    assert counter is not None and counter() == 0
    copy.writes = 2
    assert counter() == 2
    assert copy.unreadable is None
    copy.damaged = "database modified"
    assert copy.unreadable == "modified"
    copy.is_restored = False
    assert copy.unreadable == "restoring"
