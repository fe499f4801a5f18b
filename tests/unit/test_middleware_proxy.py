from __future__ import annotations

import asyncio

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Scope

from forwarder.node_headers import sign_node_headers

from .nodes import SECRET, Nodes, two_nodes

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("over_http_and_channel")]


def echo_app(nodes_ref: list[Nodes]) -> Starlette:
    async def write(request: Request) -> Response:
        body = await request.body()
        nodes_ref[0].log.commit()
        response = JSONResponse(
            {
                "body": body.decode(),
                "method": request.method,
                "query": str(request.query_params),
                "xff": request.headers.get("x-forwarded-for"),
                "host": request.headers.get("host"),
                "by": request.headers.get("forwarder-forwarded-by"),
            },
            status_code=201,
        )
        response.set_cookie("a", "1")
        response.set_cookie("b", "2")
        return response

    async def read(request: Request) -> Response:
        return JSONResponse({"read": True})

    return Starlette(routes=[Route("/things", write, methods=["POST", "PUT", "PATCH", "DELETE"]), Route("/r", read)])


async def test_a_write_on_a_replica_is_forwarded_and_answered_once_the_replica_holds_it() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: echo_app(ref)) as nodes:
        ref.append(nodes)
        async with nodes.client(nodes.replica_app) as client:
            with anyio.fail_after(5):
                request = asyncio.create_task(client.post("/things?x=1", content=b"payload"))
                while nodes.log.head == 0:
                    await asyncio.sleep(0.001)
                await asyncio.sleep(0.05)
                assert not request.done(), "answered before the replica held the write"
                nodes.replica_engine.apply()
                response = await request
    assert response.status_code == 201
    assert response.json() == {
        "body": "payload",
        "method": "POST",
        "query": "x=1",
        "xff": "127.0.0.1",
        "host": "testserver",
        "by": "node-r",
    }
    assert response.headers.get_list("set-cookie") == [
        "a=1; Path=/; SameSite=lax",
        "b=2; Path=/; SameSite=lax",
        "__txid=0000000000000001; Path=/; Max-Age=300; HttpOnly; SameSite=Lax",
    ]
    assert response.headers["forwarder-node"] == "node-p"
    assert response.headers["forwarder-forwarded"] == "proxy"
    assert response.headers["forwarder-txid"] == "0000000000000001"
    # One Server-Timing header: the primary's entries, then this hop's.
    (timing,) = response.headers.get_list("server-timing")
    assert [entry.strip().split(";")[0] for entry in timing.split(",")] == ["app", "commit", "primary", "replication"]


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
async def test_every_write_method_is_forwarded(method: str) -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: echo_app(ref)) as nodes:
        ref.append(nodes)
        nodes.log.auto_apply = True
        async with nodes.client(nodes.replica_app) as client:
            response = await client.request(method, "/things")
    assert response.status_code == 201 and response.json()["method"] == method
    assert response.headers["forwarder-node"] == "node-p"


async def test_reads_on_a_replica_stay_local() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: echo_app(ref)) as nodes:
        async with nodes.client(nodes.replica_app) as client:
            for method in ("GET", "HEAD", "OPTIONS"):
                response = await client.request(method, "/r")
                assert response.headers["forwarder-node"] == "node-r"
                assert "forwarder-forwarded" not in response.headers


async def test_writes_on_the_primary_carry_the_txid_and_reads_do_not() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: echo_app(ref)) as nodes:
        ref.append(nodes)
        async with nodes.client(nodes.primary_app) as client:
            write = await client.post("/things")
            read = await client.get("/r")
    assert write.headers["forwarder-txid"] == "0000000000000001"
    assert "forwarder-txid" not in read.headers
    assert write.headers["forwarder-node"] == read.headers["forwarder-node"] == "node-p"


async def test_primary_unreachable_gives_503_with_retry_after() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with two_nodes(Starlette, primary_transport=httpx.MockTransport(refuse)) as nodes:
        async with nodes.client(nodes.replica_app) as client:
            response = await client.post("/things", content=b"x")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "cannot connect to the primary at http://primary" in response.text


async def test_no_answer_from_the_primary_gives_504_and_no_retry() -> None:
    attempts: list[int] = []

    def time_out(request: httpx.Request) -> httpx.Response:
        attempts.append(1)
        raise httpx.ReadTimeout("timed out", request=request)

    async with two_nodes(Starlette, primary_transport=httpx.MockTransport(time_out)) as nodes:
        async with nodes.client(nodes.replica_app) as client:
            response = await client.post("/things", content=b"x")
    assert response.status_code == 504
    assert "may have been executed" in response.text
    assert attempts == [1]


async def test_a_lagging_replica_still_answers_the_committed_write_marked_stale() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: echo_app(ref), replication_timeout=0.05) as nodes:
        ref.append(nodes)
        async with nodes.client(nodes.replica_app) as client:
            response = await client.post("/things")
    assert response.status_code == 201
    assert response.headers["forwarder-stale"] == "1"


async def test_a_forwarded_write_landing_on_a_replica_is_not_forwarded_again() -> None:
    ref: list[Nodes] = []
    async with two_nodes(lambda: echo_app(ref)) as nodes:
        async with nodes.client(nodes.replica_app) as client:
            signed = sign_node_headers(SECRET.encode(), "POST", "/things", [(b"forwarder-forwarded-by", b"node-x")])
            response = await client.post("/things", headers=signed)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert nodes.log.head == 0


async def test_health_reports_the_node() -> None:
    async with two_nodes(Starlette) as nodes:
        nodes.replica_engine.apply()
        async with nodes.client(nodes.replica_app) as client:
            health = (await client.get("/_forwarder/health")).json()
            missing = await client.get("/_forwarder/nothing")
    assert health["node"] == "node-r" and health["role"] == "replica" and health["primary"] == "node-p"
    assert health["engine"] == "memory" and health["status"] == "ok"
    assert missing.status_code == 404


async def test_streamed_request_body_reaches_the_primary_whole() -> None:
    ref: list[Nodes] = []
    chunks = [b"a" * 70_000, b"b" * 70_000, b"c"]

    async def body() -> object:
        for chunk in chunks:
            yield chunk

    async with two_nodes(lambda: echo_app(ref)) as nodes:
        ref.append(nodes)
        nodes.log.auto_apply = True
        async with nodes.client(nodes.replica_app) as client:
            response = await client.post("/things", content=body())  # type: ignore[arg-type]
    assert response.json()["body"] == b"".join(chunks).decode()


async def test_lifespan_starts_and_stops_the_forwarder() -> None:
    from forwarder import Forwarder, ForwarderMiddleware, MemoryEngine, MemoryLog, Role, Topology

    forwarder = Forwarder(engine=MemoryEngine(MemoryLog(), Role.PRIMARY), topology=Topology("n", "r", Role.PRIMARY))
    app = ForwarderMiddleware(Starlette(), forwarder=forwarder)
    sent: list[Message] = []
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    started_during: list[bool] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        started_during.append(forwarder.started)
        sent.append(message)

    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    await app(scope, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    # Running when startup completes; already closed when shutdown completes.
    assert started_during == [True, False]
    assert not forwarder.started


async def test_cookies_the_primary_sets_for_one_user_never_reach_another() -> None:
    # The replica's connection pool to the primary is shared by every user: it must not keep a
    # cookie jar, or one user's session cookie would ride along on the next user's request.
    ref: list[Nodes] = []

    async def login(request: Request) -> Response:
        ref[0].log.commit()
        response = JSONResponse({"ok": True}, status_code=201)
        response.set_cookie("session", (await request.body()).decode())
        return response

    async def whoami(request: Request) -> Response:
        ref[0].log.commit()
        return JSONResponse({"cookie": request.headers.get("cookie")}, status_code=201)

    def make_app() -> Starlette:
        return Starlette(routes=[Route("/login", login, methods=["POST"]), Route("/whoami", whoami, methods=["POST"])])

    async with two_nodes(make_app) as nodes:
        ref.append(nodes)
        nodes.log.auto_apply = True
        with anyio.fail_after(5):
            async with nodes.client(nodes.replica_app) as alice:
                response = await alice.post("/login", content=b"alice-secret")
                assert response.status_code == 201
                assert alice.cookies.get("session") == "alice-secret"
            async with nodes.client(nodes.replica_app) as bob:
                seen = (await bob.post("/whoami")).json()["cookie"]
    assert seen is None or "alice-secret" not in seen


async def test_a_forwarded_request_carries_its_clients_headers_and_none_of_the_http_clients_own() -> None:
    # httpx adds Accept, Accept-Encoding and User-Agent to what it sends: an app behind gzip middleware
    # would then compress responses for clients that never asked for it.
    ref: list[Nodes] = []
    seen: list[dict[str, str]] = []

    async def headers(request: Request) -> Response:
        seen.append(dict(request.headers))
        ref[0].log.commit()
        return Response(status_code=201)

    async with two_nodes(lambda: Starlette(routes=[Route("/h", headers, methods=["POST"])])) as nodes:
        ref.append(nodes)
        async with nodes.client(nodes.replica_app) as client:
            client.headers.clear()
            for i, sent in enumerate(({}, {"accept-encoding": "br", "user-agent": "curl/8"})):
                task = asyncio.create_task(client.post("/h", content=b"x", headers=sent))
                with anyio.fail_after(5):
                    while len(seen) <= i:  # the primary ran it; the replica now waits for its copy
                        await asyncio.sleep(0.001)
                    nodes.replica_engine.apply()
                    assert (await task).status_code == 201
    assert not {"accept", "accept-encoding", "user-agent"} & set(seen[0])
    assert (seen[1]["accept-encoding"], seen[1]["user-agent"]) == ("br", "curl/8")
