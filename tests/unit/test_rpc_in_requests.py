"""A `@primary_only` call inside a request a replica serves itself (a read, a passthrough path):
the response carries the call's txid and cookie, and a call that did not get through is a 503/504."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from forwarder import Registry, ReplicationTimeout, Txid
from forwarder.exceptions import EngineUnavailable
from forwarder.policy import RoutingPolicy

from .nodes import Nodes, two_nodes

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("over_http_and_channel")]

POLICY = RoutingPolicy(passthrough=("/local/*",))


def app_with(registry: Registry, nodes: list[Nodes]) -> Callable[[], Starlette]:
    """An app factory (one per node) sharing one registered `add`, which commits on the primary."""

    @registry.primary_only(name="add")
    async def add(value: int) -> int:
        nodes[0].log.commit()
        return value + 1

    return lambda: _app(add)


def _app(add: Callable[[int], Awaitable[int]]) -> Starlette:
    async def handler(request: Request) -> JSONResponse:
        try:
            return JSONResponse({"result": await add(1)})
        except ReplicationTimeout as exc:  # committed on the primary; this replica is behind
            return JSONResponse({"result": exc.result, "stale": True})

    async def where(request: Request) -> PlainTextResponse:
        return PlainTextResponse("read")

    routes = [Route("/local/add", handler, methods=["POST"]), Route("/add", handler), Route("/where", where)]
    return Starlette(routes=routes)


async def test_a_call_inside_a_replica_read_sets_the_txid_and_the_cookie() -> None:
    registry, ref = Registry(), list[Nodes]()
    async with two_nodes(app_with(registry, ref), registry=registry, replication_timeout=0.05) as nodes:
        ref.append(nodes)
        async with nodes.client(nodes.replica_app) as client:
            with anyio.fail_after(5):
                response = await client.get("/add")  # the replica never applies: the call's wait times out
                assert response.status_code == 200 and response.json() == {"result": 2, "stale": True}
                assert response.headers["forwarder-node"] == "node-r"
                assert response.headers["forwarder-txid"] == str(Txid(1))
                assert client.cookies["__txid"] == str(Txid(1))
                # The next read carries the cookie: it waits, then is served by the primary (on_lag=forward).
                again = await client.get("/where")
        assert again.status_code == 200 and again.headers["forwarder-node"] == "node-p"


async def test_a_call_inside_a_passthrough_path_sets_the_cookie() -> None:
    registry, ref = Registry(), list[Nodes]()
    async with two_nodes(app_with(registry, ref), registry=registry, policy=POLICY) as nodes:
        ref.append(nodes)
        nodes.log.auto_apply = True
        async with nodes.client(nodes.replica_app) as client:
            response = await client.post("/local/add")
    assert response.status_code == 200 and response.json() == {"result": 2}
    assert response.headers["forwarder-node"] == "node-r"  # served here, not forwarded
    assert "forwarder-forwarded" not in response.headers
    assert response.headers["forwarder-txid"] == str(Txid(1))
    assert "__txid=0000000000000001" in response.headers["set-cookie"]


async def test_a_request_without_a_call_gets_no_cookie() -> None:
    registry, ref = Registry(), list[Nodes]()
    async with two_nodes(app_with(registry, ref), registry=registry, policy=POLICY) as nodes:
        ref.append(nodes)
        async with nodes.client(nodes.replica_app) as client:
            response = await client.get("/where")
    assert response.status_code == 200
    assert "set-cookie" not in response.headers and "forwarder-txid" not in response.headers


@pytest.mark.parametrize("path", ["/add", "/local/add"])
async def test_a_call_that_cannot_reach_the_primary_is_a_503_with_retry_after(path: str) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    registry, ref = Registry(), list[Nodes]()
    transport = httpx.MockTransport(refuse)
    async with two_nodes(
        app_with(registry, ref), registry=registry, policy=POLICY, primary_transport=transport
    ) as nodes:
        ref.append(nodes)
        async with nodes.client(nodes.replica_app) as client:
            response = await client.request("POST" if path.startswith("/local") else "GET", path)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.headers["forwarder-node"] == "node-r"
    assert "cannot connect to the primary" in response.text
    assert nodes.log.head == 0  # nothing ran


async def test_a_call_whose_outcome_is_unknown_is_a_504_without_retry_after() -> None:
    def time_out(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    registry, ref = Registry(), list[Nodes]()
    transport = httpx.MockTransport(time_out)
    async with two_nodes(
        app_with(registry, ref), registry=registry, policy=POLICY, primary_transport=transport
    ) as nodes:
        ref.append(nodes)
        async with nodes.client(nodes.replica_app) as client:
            response = await client.post("/local/add")
    assert response.status_code == 504 and "retry-after" not in response.headers
    assert "may have been executed" in response.text


async def test_other_errors_in_a_passthrough_path_still_reach_the_server() -> None:
    async def boom(request: Request) -> PlainTextResponse:
        raise KeyError("the app's own bug")

    def make() -> Starlette:
        return Starlette(routes=[Route("/local/boom", boom)])

    async with two_nodes(make, policy=POLICY) as nodes:
        transport = httpx.ASGITransport(app=nodes.replica_app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.get("/local/boom")
    assert response.status_code == 500


@pytest.mark.parametrize("path", ["/add", "/local/add"])
async def test_a_call_whose_txid_the_primary_cannot_learn_marks_the_response_stale(path: str) -> None:
    registry, ref = Registry(), list[Nodes]()
    async with two_nodes(app_with(registry, ref), registry=registry, policy=POLICY, replication_timeout=30) as nodes:
        ref.append(nodes)

        async def engine_down() -> Txid:
            raise EngineUnavailable("Litestream's control socket /x.sock refused the connection")

        nodes.primary.engine.commit_position = engine_down  # type: ignore[method-assign]
        async with nodes.client(nodes.replica_app) as client:
            with anyio.fail_after(5):  # no txid to wait for: not the 30 s replication timeout
                response = await client.request("GET" if path == "/add" else "POST", path)
    assert response.status_code == 200 and response.json() == {"result": 2}  # it ran: its result, no error
    assert response.headers["forwarder-node"] == "node-r"  # served by the replica
    assert response.headers["forwarder-stale"] == "1"
    assert "forwarder-txid" not in response.headers and "__txid" not in client.cookies
