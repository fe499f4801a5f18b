from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

import anyio
import httpx
import pytest
from pydantic import BaseModel, Field
from starlette.applications import Starlette

from forwarder import (
    PrimaryUnavailable,
    Registry,
    RemoteError,
    ReplicationTimeout,
    RPCValidationError,
    Txid,
    UnknownFunction,
)
from forwarder.exceptions import EngineUnavailable
from forwarder.rpc.signing import sign

from .nodes import SECRET, Nodes, two_nodes

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("over_http_and_channel")]


class Note(BaseModel):
    title: str = Field(max_length=10)
    tags: list[str] = []


def board_app() -> Starlette:
    return Starlette()


async def test_a_replica_call_runs_on_the_primary_and_returns_once_the_replica_holds_it() -> None:
    registry = Registry()
    ran_on: list[str] = []
    nodes_ref: list[Nodes] = []

    @registry.primary_only(name="save")
    async def save(note: Note, *, copies: int = 1) -> list[Note]:
        ran_on.append(nodes_ref[0].primary.topology.node_id if _on_primary(nodes_ref[0]) else "replica")
        nodes_ref[0].log.commit()
        return [note] * copies

    async with two_nodes(board_app, registry=registry) as nodes:
        nodes_ref.append(nodes)
        with nodes.replica.activate(), anyio.fail_after(5):
            call = asyncio.create_task(save(Note(title="hi", tags=["a"]), copies=2))
            while nodes.log.head == 0:
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.05)
            assert not call.done(), "returned before the replica held the write"
            nodes.replica_engine.apply()
            result = await call
    assert result == [Note(title="hi", tags=["a"])] * 2
    assert isinstance(result[0], Note)
    assert ran_on == ["node-p"]
    assert nodes.replica.tracker.position == Txid(1)


def _on_primary(nodes: Nodes) -> bool:
    from forwarder.context import current_forwarder

    return current_forwarder() is nodes.primary


async def test_a_replication_timeout_carries_the_committed_result() -> None:
    registry = Registry()
    log_ref: list[Nodes] = []

    @registry.primary_only(name="write")
    async def write(value: int) -> int:
        log_ref[0].log.commit()
        return value * 2

    async with two_nodes(board_app, registry=registry, replication_timeout=0.05) as nodes:
        log_ref.append(nodes)
        with nodes.replica.activate(), pytest.raises(ReplicationTimeout) as caught:
            await write(21)
    assert caught.value.committed and caught.value.result == 42


async def test_sync_functions_run_in_a_worker_thread() -> None:
    registry = Registry()
    threads: list[str] = []

    @registry.primary_only(name="sync_add")
    def sync_add(a: int, b: int) -> int:
        threads.append(threading.current_thread().name)
        return a + b

    async with two_nodes(board_app, registry=registry) as nodes:
        with nodes.replica.activate():
            assert await anyio.to_thread.run_sync(sync_add, 2, 3) == 5
            with pytest.raises(RuntimeError, match="event loop thread"):
                sync_add(1, 1)
    assert threads and threads[0] != threading.main_thread().name


async def test_without_a_running_forwarder_the_function_runs_locally() -> None:
    registry = Registry()

    @registry.primary_only(name="local")
    async def local(x: int) -> int:
        return x + 1

    assert await local(1) == 2


async def test_remote_errors_come_back_with_type_and_message() -> None:
    registry = Registry()

    @registry.primary_only(name="boom")
    async def boom() -> None:
        raise KeyError("missing thing")

    async with two_nodes(board_app, registry=registry) as nodes:
        with nodes.replica.activate(), pytest.raises(RemoteError) as caught:
            await boom()
    assert caught.value.type == "KeyError" and "missing thing" in caught.value.message
    assert caught.value.status == 500


async def test_a_function_missing_on_the_primary_is_unknown() -> None:
    primary_registry, replica_registry = Registry(), Registry()

    @replica_registry.primary_only(name="only_here")
    async def only_here() -> None:
        return None

    async with two_nodes(board_app, registry=primary_registry) as nodes:
        nodes.replica.registry = replica_registry
        with nodes.replica.activate(), pytest.raises(UnknownFunction, match="only_here"):
            await only_here()


async def test_results_that_do_not_match_the_hint_are_refused() -> None:
    registry = Registry()

    @registry.primary_only(name="liar")
    async def liar() -> Note:
        return "not a note"  # type: ignore[return-value]

    async with two_nodes(board_app, registry=registry) as nodes:
        with nodes.replica.activate(), pytest.raises(RPCValidationError, match="return type"):
            await liar()


async def test_bad_arguments_are_refused_before_sending() -> None:
    registry = Registry()

    @registry.primary_only(name="one_arg")
    async def one_arg(x: int) -> int:
        return x

    async with two_nodes(board_app, registry=registry) as nodes:
        with nodes.replica.activate(), pytest.raises(TypeError, match="one_arg"):
            await one_arg(1, 2)  # type: ignore[call-arg]


async def test_primary_unreachable_is_primary_unavailable() -> None:
    registry = Registry()

    @registry.primary_only(name="f")
    async def f() -> None:
        return None

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with two_nodes(board_app, registry=registry, primary_transport=httpx.MockTransport(refuse)) as nodes:
        with nodes.replica.activate(), pytest.raises(PrimaryUnavailable, match="cannot connect to the primary"):
            await f()


# -- the endpoint, called by hand ---------------------------------------------------------------


def _signed(path: str, body: bytes, **kwargs: Any) -> dict[str, str]:
    return {"forwarder-signature": sign(SECRET.encode(), "POST", path, body, **kwargs)}


async def _post(nodes: Nodes, name: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    async with nodes.client(nodes.primary_app) as client:
        return await client.post(f"/_forwarder/rpc/{name}", content=body, headers=headers or {})


@pytest.fixture
def counting_registry() -> tuple[Registry, list[int]]:
    registry = Registry()
    calls: list[int] = []

    @registry.primary_only(name="count")
    async def count(n: int) -> int:
        calls.append(n)
        return n

    return registry, calls


async def test_endpoint_refuses_unsigned_forged_expired_and_replayed_calls(
    counting_registry: tuple[Registry, list[int]],
) -> None:
    registry, calls = counting_registry
    body = b'{"args":[1],"kwargs":{}}'
    path = "/_forwarder/rpc/count"
    async with two_nodes(board_app, registry=registry) as nodes:
        unsigned = await _post(nodes, "count", body)
        forged = await _post(nodes, "count", body, {"forwarder-signature": sign(b"wrong", "POST", path, body)})
        expired = await _post(nodes, "count", body, _signed(path, body, now=1.0))
        good_headers = _signed(path, body)
        good = await _post(nodes, "count", body, good_headers)
        replayed = await _post(nodes, "count", body, good_headers)
    for response, word in [(unsigned, "missing"), (forged, "invalid"), (expired, "expired"), (replayed, "replayed")]:
        assert response.status_code == 401, response.text
        assert response.json()["error"]["type"] == "RPCAuthError"
        assert word in response.json()["error"]["message"]
    assert good.status_code == 200 and good.json()["result"] == 1
    assert calls == [1], "only the one valid call executed"


@pytest.mark.parametrize(
    ("name", "body", "status", "word"),
    [
        ("nope", b'{"args":[],"kwargs":{}}', 404, "no @primary_only function"),
        ("count", b"not json", 400, "malformed RPC body"),
        ("count", b'{"args":[1],"extra":1}', 400, "malformed RPC body"),
        ("count", b'{"args":["x"],"kwargs":{}}', 422, "n: Input should be a valid integer"),
        ("count", b'{"args":[],"kwargs":{}}', 422, "missing a required argument"),
    ],
)
async def test_endpoint_explains_bad_calls(
    counting_registry: tuple[Registry, list[int]], name: str, body: bytes, status: int, word: str
) -> None:
    registry, calls = counting_registry
    async with two_nodes(board_app, registry=registry) as nodes:
        response = await _post(nodes, name, body, _signed(f"/_forwarder/rpc/{name}", body))
    assert response.status_code == status
    assert word in response.json()["error"]["message"]
    assert calls == []


async def test_endpoint_refuses_calls_through_the_public_proxy(counting_registry: tuple[Registry, list[int]]) -> None:
    registry, calls = counting_registry
    body = b'{"args":[1]}'
    async with two_nodes(board_app, registry=registry) as nodes:
        headers = {**_signed("/_forwarder/rpc/count", body), "fly-client-ip": "1.2.3.4"}
        response = await _post(nodes, "count", body, headers)
    assert response.status_code == 403 and calls == []


async def test_endpoint_on_a_replica_says_not_primary(counting_registry: tuple[Registry, list[int]]) -> None:
    registry, calls = counting_registry
    body = b'{"args":[1]}'
    async with two_nodes(board_app, registry=registry) as nodes:
        async with nodes.client(nodes.replica_app) as client:
            response = await client.post(
                "/_forwarder/rpc/count", content=body, headers=_signed("/_forwarder/rpc/count", body)
            )
    assert response.status_code == 503
    assert response.json()["error"] == {
        "type": "NotPrimary",
        "message": "node node-r is not the primary any more",
        "retryable": True,
    }
    assert calls == []


async def test_endpoint_reply_carries_the_txid(counting_registry: tuple[Registry, list[int]]) -> None:
    registry, _ = counting_registry
    body = json.dumps({"kwargs": {"n": 7}}).encode()
    async with two_nodes(board_app, registry=registry) as nodes:
        nodes.log.commit()
        response = await _post(nodes, "count", body, _signed("/_forwarder/rpc/count", body))
    assert response.json() == {"result": 7, "txid": "0000000000000001"}
    assert response.headers["forwarder-txid"] == "0000000000000001"


async def test_get_is_not_allowed(counting_registry: tuple[Registry, list[int]]) -> None:
    registry, _ = counting_registry
    async with two_nodes(board_app, registry=registry) as nodes:
        async with nodes.client(nodes.primary_app) as client:
            response = await client.get("/_forwarder/rpc/count")
    assert response.status_code == 405


@pytest.mark.parametrize(
    "error", [EngineUnavailable("Litestream's control socket /x.sock refused the connection"), RuntimeError("a bug")]
)
async def test_a_call_whose_txid_the_primary_cannot_learn_returns_its_result_without_waiting(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry()
    ran: list[int] = []

    @registry.primary_only(name="record")
    async def record(value: int) -> int:
        ran.append(value)
        return value + 1

    async with two_nodes(board_app, registry=registry, replication_timeout=30) as nodes:

        async def engine_down() -> Txid:
            raise error

        nodes.primary.engine.commit_position = engine_down  # type: ignore[method-assign]
        body = json.dumps({"args": [1]}).encode()
        reply = await _post(nodes, "record", body, _signed("/_forwarder/rpc/record", body))
        # Ran and committed: a 200 with the result and no txid, never an error that says it did not run.
        assert reply.status_code == 200 and reply.json() == {"result": 2, "txid": None}
        assert reply.headers["forwarder-stale"] == "1" and "forwarder-txid" not in reply.headers
        with nodes.replica.activate(), anyio.fail_after(5), caplog.at_level(logging.WARNING):
            assert await record(41) == 42  # no txid to wait for: it returns at once, not after 30 s
    assert ran == [1, 41]
    assert "could not learn its txid" in caplog.text and str(error) in caplog.text
