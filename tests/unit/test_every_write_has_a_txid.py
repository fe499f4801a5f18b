"""Read-your-writes for every write: late-discovered writes, the header token, the primary's live position."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from forwarder import Forwarder, ForwarderMiddleware, MemoryEngine, MemoryLog, Role, Topology, Txid
from forwarder.context import current_forwarder
from forwarder.exceptions import EngineUnavailable
from forwarder.node_headers import seal_replay
from forwarder.policy import RoutingPolicy

from .asgi import body_of, call, headers_of, http_scope, status_of
from .nodes import Nodes, two_nodes

pytestmark = pytest.mark.anyio


def counter(ref: list[Nodes]) -> Starlette:
    """A GET that writes (a visit counter), and a plain read."""

    async def visit(request: Request) -> Response:
        forwarder = current_forwarder()
        assert forwarder is not None
        if not forwarder.is_primary:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        txid = ref[0].log.commit()
        return PlainTextResponse(f"visit {txid} on {forwarder.topology.node_id}")

    async def read(request: Request) -> Response:
        forwarder = current_forwarder()
        assert forwarder is not None
        return JSONResponse({"node": forwarder.topology.node_id, "position": str(forwarder.tracker.position)})

    return Starlette(routes=[Route("/visit", visit), Route("/r", read)])


async def test_a_late_discovered_write_gets_a_txid_a_cookie_and_the_replica_waits() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: counter(ref)) as nodes:
        ref.append(nodes)
        with anyio.fail_after(5):
            request = asyncio.create_task(call(nodes.replica_app, http_scope("GET", "/visit")))
            await asyncio.sleep(0.05)
            assert not request.done(), "the replica answered before its copy held the write"
            nodes.replica_engine.apply()
            sent = await request
    headers = headers_of(sent)
    assert status_of(sent) == 200 and body_of(sent) == b"visit 0000000000000001 on node-p"
    assert headers["forwarder-txid"] == ["0000000000000001"]
    assert headers["set-cookie"][0].startswith("__txid=0000000000000001;")
    assert headers["forwarder-forwarded"] == ["proxy"]
    assert nodes.replica.tracker.position == 1


async def test_a_replayed_late_write_is_a_write_on_the_primary() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: counter(ref)) as nodes:
        ref.append(nodes)
        secret = nodes.primary.node_secret
        assert secret is not None

        def replayed(state: bytes, path: str) -> tuple[bytes, bytes]:
            # What the Fly proxy sends back: the replica's sealed state, as it answered.
            sealed = seal_replay(secret, b"instance=node-p;state=" + state, "GET", path).split(b";state=")[1]
            return (b"fly-replay-src", b"instance=node-r;region=ams;t=1;state=" + sealed)

        sent = await call(nodes.primary_app, http_scope("GET", "/visit", [replayed(b"readonly", "/visit")]))
        read = await call(nodes.primary_app, http_scope("GET", "/r", [replayed(b"lag", "/r")]))
        forged = (b"fly-replay-src", b"instance=node-r;region=ams;t=1;state=readonly")
        unsigned = await call(nodes.primary_app, http_scope("GET", "/r", [forged]))
    assert headers_of(sent)["forwarder-txid"] == ["0000000000000001"]
    assert "forwarder-txid" not in headers_of(read) and "set-cookie" not in headers_of(read)
    assert "forwarder-txid" not in headers_of(unsigned), "a client's own fly-replay-src made a read a write"


async def test_a_read_forwarded_for_lag_is_not_made_a_write() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: counter(ref), replication_timeout=0.05) as nodes:
        ref.append(nodes)
        nodes.log.commit()
        with anyio.fail_after(2):
            sent = await call(nodes.replica_app, http_scope("GET", "/r", [(b"forwarder-txid", b"0000000000000001")]))
    assert json.loads(body_of(sent))["node"] == "node-p"
    assert "forwarder-txid" not in headers_of(sent) and "set-cookie" not in headers_of(sent)


async def test_the_txid_header_on_a_read_waits_like_the_cookie() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: counter(ref)) as nodes:
        ref.append(nodes)
        nodes.log.commit()
        nodes.log.commit()
        with anyio.fail_after(5):
            request = asyncio.create_task(
                call(nodes.replica_app, http_scope("GET", "/r", [(b"forwarder-txid", b"0000000000000002")]))
            )
            await asyncio.sleep(0.05)
            assert not request.done()
            nodes.replica_engine.apply()
            sent = await request
    assert json.loads(body_of(sent)) == {"node": "node-r", "position": "0000000000000002"}


async def test_cookie_and_header_together_wait_for_the_later() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: counter(ref)) as nodes:
        ref.append(nodes)
        for _ in range(3):
            nodes.log.commit()
        nodes.replica_engine.apply(Txid(1))
        headers = [(b"cookie", b"__txid=0000000000000001"), (b"forwarder-txid", b"0000000000000003")]
        with anyio.fail_after(5):
            request = asyncio.create_task(call(nodes.replica_app, http_scope("GET", "/r", headers)))
            await asyncio.sleep(0.05)
            assert not request.done()
            nodes.replica_engine.apply()
            sent = await request
    assert json.loads(body_of(sent))["position"] == "0000000000000003"


@pytest.mark.parametrize("value", [b"", b"zz", b"1", b"00000000000000001", b"\xff" * 16])
async def test_a_malformed_txid_header_is_ignored(value: bytes) -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: counter(ref), policy=RoutingPolicy(on_lag="error")) as nodes:
        ref.append(nodes)
        sent = await call(nodes.replica_app, http_scope("GET", "/r", [(b"forwarder-txid", value)]))
    assert status_of(sent) == 200 and json.loads(body_of(sent))["node"] == "node-r"


async def test_primary_health_reports_the_engines_position_with_writes_outside_requests() -> None:
    async with two_nodes(Starlette) as nodes:
        for _ in range(4):
            nodes.log.commit()  # a cron job, start-up DDL: no request asked for a commit position
        sent = await call(nodes.primary_app, http_scope("GET", "/_forwarder/health"))
    assert json.loads(body_of(sent))["txid"] == "0000000000000004"
    assert nodes.primary.tracker.position == 4


async def test_a_primary_without_the_secret_says_so_when_signed_requests_arrive(
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary = Forwarder(
        engine=MemoryEngine(MemoryLog(), Role.PRIMARY), topology=Topology("node-p", "fra", Role.PRIMARY)
    )
    app = ForwarderMiddleware(
        Starlette(routes=[Route("/r", lambda request: PlainTextResponse("ok"))]), forwarder=primary
    )
    signed = [(b"forwarder-reason", b"readonly"), (b"forwarder-node-signature", b"t=1,v1=00")]
    async with primary:
        with caplog.at_level("WARNING", logger="forwarder.middleware"):
            await call(app, http_scope("GET", "/r", signed))
    assert "has no FORWARDER_SECRET" in caplog.text


async def test_a_write_a_replica_waits_on_gets_the_exact_txid_any_other_the_prompt_one() -> None:
    ref: list[Nodes] = []

    async def write(request: Request) -> Response:
        ref[0].log.commit()
        return PlainTextResponse("ok", status_code=201)

    asked: list[str] = []
    async with two_nodes(lambda: Starlette(routes=[Route("/w", write, methods=["POST"])])) as nodes:
        ref.append(nodes)
        engine = nodes.primary.engine
        exact = engine.commit_position

        async def commit_position() -> Txid:
            asked.append("exact")
            return await exact()

        async def promise_position() -> Txid:
            asked.append("prompt")
            return await exact()  # (the memory engine's own promise_position asks commit_position)

        engine.commit_position = commit_position  # type: ignore[method-assign]
        engine.promise_position = promise_position  # type: ignore[method-assign]
        secret = nodes.primary.node_secret
        assert secret is not None
        sealed = seal_replay(secret, b"instance=node-p;state=method", "POST", "/w").split(b";state=")[1]
        replayed = (b"fly-replay-src", b"instance=node-r;region=ams;t=1;state=" + sealed)
        with anyio.fail_after(5):
            direct = await call(nodes.primary_app, http_scope("POST", "/w"))
            assert asked == ["prompt"]  # made on the primary: its cookie is read later, if ever
            await call(nodes.primary_app, http_scope("POST", "/w", [replayed]))
            assert asked == ["prompt", "prompt"]  # replayed by the Fly proxy: the replica did not wait
            nodes.log.auto_apply = True
            proxied = await call(nodes.replica_app, http_scope("POST", "/w"))
            assert asked == ["prompt", "prompt", "exact"]  # the replica holds the response until it has it
    assert headers_of(direct)["forwarder-txid"] == ["0000000000000001"]
    assert headers_of(proxied)["forwarder-forwarded"] == ["proxy"] and status_of(proxied) == 201


@pytest.mark.parametrize(
    ("error", "traceback"),
    [
        (
            EngineUnavailable(
                "Litestream's control socket /x.sock refused the connection; start `litestream replicate`"
            ),
            False,
        ),
        (RuntimeError("a bug"), True),
    ],
)
async def test_a_write_whose_txid_cannot_be_read_is_answered_committed_and_stale(
    error: Exception, traceback: bool, caplog: pytest.LogCaptureFixture
) -> None:
    ref: list[Nodes] = []

    async def write(request: Request) -> Response:
        ref[0].log.commit()
        return PlainTextResponse("ok", status_code=201)

    async with two_nodes(lambda: Starlette(routes=[Route("/w", write, methods=["POST"])])) as nodes:
        ref.append(nodes)

        async def failing() -> Txid:
            raise error

        nodes.primary.engine.promise_position = failing  # type: ignore[method-assign]
        with anyio.fail_after(5), caplog.at_level(logging.ERROR, "forwarder.middleware"):
            response = await call(nodes.primary_app, http_scope("POST", "/w"))
    headers = headers_of(response)
    assert status_of(response) == 201 and body_of(response) == b"ok"  # committed: never a 5xx
    assert headers["forwarder-stale"] == ["1"]
    assert "forwarder-txid" not in headers and "set-cookie" not in headers
    [record] = [r for r in caplog.records if r.name == "forwarder.middleware"]
    assert record.getMessage().startswith("POST /w: ") and "Forwarder-Stale: 1" in record.getMessage()
    # An engine's own error names its cause and fix in one line; anything else is a bug, with its traceback.
    assert (str(error) in record.getMessage()) is not traceback
    assert (record.exc_info is not None) is traceback
