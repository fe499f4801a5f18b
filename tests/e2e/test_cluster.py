"""The walking skeleton on real parts: 3 uvicorn nodes, Litestream replication, loopback only."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from forwarder.dev import Cluster
from forwarder.engines.control_socket import ControlSocket
from forwarder.rpc.signing import sign
from forwarder.txid import Txid

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

RPC_NAME = "example_app.board.post_message"
RPC_PATH = f"/_forwarder/rpc/{RPC_NAME}"


async def message_ids(client: httpx.AsyncClient, url: str) -> list[int]:
    response = await client.get(f"{url}/api/messages")
    assert response.status_code == 200, response.text
    return [m["id"] for m in response.json()["messages"]]


async def test_a_post_to_a_replica_returns_only_once_that_replica_holds_it(cluster: Cluster) -> None:
    # No cookies anywhere: the POST itself must not answer before the replica has the row.
    misses = []
    replicas = cluster.replicas
    async with httpx.AsyncClient(timeout=10) as writer, httpx.AsyncClient(timeout=10) as reader:
        with anyio.fail_after(120):
            for i in range(200):
                node = replicas[i % len(replicas)]
                response = await writer.post(f"{node.url}/api/messages", json={"author": "e2e", "text": f"m{i}"})
                writer.cookies.clear()
                assert response.status_code == 201, response.text
                assert response.headers["forwarder-node"] == cluster.primary.id
                assert response.headers["forwarder-forwarded"] == "proxy"
                message_id = response.json()["id"]
                if message_id not in await message_ids(reader, node.url):
                    misses.append((i, node.id, message_id))
    assert misses == []


async def test_eight_concurrent_writers_each_read_their_own_write_on_a_replica(cluster: Cluster) -> None:
    # Commits from 8 writers interleave, so the primary's txid for one write is worked out while
    # others commit and Litestream syncs: each must still cover its own write. Even writers post to
    # the primary and read on a replica with the cookie the primary set; odd writers post through a
    # replica (no cookies: the POST itself waits) and read there.
    misses: list[tuple[int, int, str, int]] = []
    replicas = cluster.replicas

    async def writer(k: int) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            for i in range(25):
                replica = replicas[(k + i) % len(replicas)]
                target = cluster.primary.url if k % 2 == 0 else replica.url
                response = await client.post(f"{target}/api/messages", json={"author": f"w{k}", "text": f"c{k}-{i}"})
                assert response.status_code == 201, response.text
                assert response.headers["forwarder-node"] == cluster.primary.id
                if k % 2 == 0:
                    assert "__txid" in client.cookies
                else:
                    client.cookies.clear()
                message_id = response.json()["id"]
                if message_id not in await message_ids(client, replica.url):
                    misses.append((k, i, replica.id, message_id))

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tasks:
            for k in range(8):
                tasks.start_soon(writer, k)
    assert misses == []


async def test_a_lone_direct_write_that_only_the_keeper_makes_a_txid_for_is_read_back_on_a_replica(
    cluster: Cluster,
) -> None:
    # The primary answers a direct write that its newest LTX does not hold with `newest + 2`. The
    # write here races a sync of the write before it (posted while that sync is active), and then
    # a forced sync takes whatever is left; no other write follows. When that leaves the answered
    # txid unmade (the sync that took the write had txid `newest + 1`), only the keeper's write can
    # make it: the replica must still serve the read with the cookie itself, with the row, promptly.
    database = cluster.replicator.database
    control = ControlSocket(cluster.replicator.socket_path)
    replica = cluster.replicas[0]
    kept: list[float] = []
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            with anyio.fail_after(120):
                for i in range(40):
                    await anyio.sleep(0.05)  # the previous round's syncs and keeper settle
                    client.cookies.clear()
                    first = await client.post(f"{cluster.primary.url}/api/messages", json={"author": "k", "text": "a"})
                    assert first.status_code == 201, first.text
                    for _ in range(50):  # until the sync of that write runs (bounded; else race it anyway)
                        status = await control.json("GET", "/debug/sync-status", database=database)
                        if status["databases"][0].get("active"):
                            break
                        await anyio.sleep(0.0002)
                    response = await client.post(
                        f"{cluster.primary.url}/api/messages", json={"author": "k", "text": "b"}
                    )
                    assert response.status_code == 201, response.text
                    txid = Txid.parse(response.headers["forwarder-txid"])
                    synced = await control.json(
                        "POST", "/sync", payload={"path": str(database), "wait": True}, database=database
                    )
                    if synced["txid"] >= txid:
                        continue  # the txid exists without the keeper (the write was in frames still pending)
                    started = time.monotonic()
                    read = await client.get(f"{replica.url}/api/messages")  # with the cookie the write set
                    kept.append(time.monotonic() - started)
                    assert read.status_code == 200, read.text
                    assert read.headers["forwarder-node"] == replica.id  # not forwarded on lag
                    assert response.json()["id"] in [m["id"] for m in read.json()["messages"]], i
                    if len(kept) == 5:
                        break
    finally:
        await control.aclose()
    assert kept, "no round left the answered txid to the keeper"
    assert max(kept) < 2.0, kept  # the replication timeout is 5 s: the txid was made, not waited out


async def reply_to_post(socket: ClientConnection) -> dict[str, Any]:
    """The next message that is not a `render` (renders are pushed whenever the node's position advances)."""
    while True:
        message: dict[str, Any] = json.loads(await socket.recv())
        if message["type"] != "render":
            return message


async def test_primary_only_from_a_replica_websocket_returns_once_the_replica_holds_it(cluster: Cluster) -> None:
    misses = []
    async with httpx.AsyncClient(timeout=10) as reader:
        with anyio.fail_after(120):
            sockets = [await connect(node.url.replace("http", "ws") + "/live") for node in cluster.replicas]
            try:
                for socket in sockets:
                    assert json.loads(await socket.recv())["type"] == "render"
                for i in range(200):
                    index = i % len(sockets)
                    await sockets[index].send(json.dumps({"type": "post", "author": "ws", "text": f"w{i}"}))
                    reply = await reply_to_post(sockets[index])
                    assert reply["type"] == "ack", reply
                    if reply["message"]["id"] not in await message_ids(reader, cluster.replicas[index].url):
                        misses.append(i)
            finally:
                for socket in sockets:
                    await socket.close()
    assert misses == []


async def test_reads_are_served_by_the_replica_itself(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for node in cluster.nodes:
            response = await client.get(f"{node.url}/api/messages")
            assert response.headers["forwarder-node"] == node.id
            assert response.json()["node"] == node.id
            assert "forwarder-forwarded" not in response.headers


async def _texts(client: httpx.AsyncClient, cluster: Cluster) -> list[str]:
    response = await client.get(f"{cluster.primary.url}/api/messages")
    return [m["text"] for m in response.json()["messages"]]


async def _newest_id(client: httpx.AsyncClient, cluster: Cluster) -> int:
    return max(await message_ids(client, cluster.primary.url), default=0)


def _body(text: str) -> bytes:
    return json.dumps({"args": [{"author": "rpc", "text": text}], "kwargs": {}}).encode()


async def test_rpc_refuses_unsigned_forged_expired_and_replayed_calls(cluster: Cluster) -> None:
    secret = cluster.secret.encode()
    primary = cluster.primary.url
    async with httpx.AsyncClient(timeout=10) as client:
        before = await _newest_id(client, cluster)
        body = _body("should never be stored")
        cases = {
            "missing": {},
            "invalid": {"forwarder-signature": sign(b"not the secret", "POST", RPC_PATH, body)},
            "expired": {"forwarder-signature": sign(secret, "POST", RPC_PATH, body, now=time.time() - 3600)},
        }
        for word, headers in cases.items():
            response = await client.post(primary + RPC_PATH, content=body, headers=headers)
            assert response.status_code == 401, response.text
            assert word in response.json()["error"]["message"]
        good_body = _body(f"exactly once {uuid.uuid4()}")
        signed = {"forwarder-signature": sign(secret, "POST", RPC_PATH, good_body)}
        first = await client.post(primary + RPC_PATH, content=good_body, headers=signed)
        replayed = await client.post(primary + RPC_PATH, content=good_body, headers=signed)
        assert first.status_code == 200, first.text
        assert replayed.status_code == 401 and "replayed" in replayed.json()["error"]["message"]
        texts = await _texts(client, cluster)
        assert "should never be stored" not in texts
        assert texts.count(json.loads(good_body)["args"][0]["text"]) == 1
        assert await _newest_id(client, cluster) == before + 1


@pytest.mark.parametrize(
    ("path", "body", "status", "word"),
    [
        ("/_forwarder/rpc/example_app.board.nothing_here", b'{"args": []}', 404, "no @primary_only function"),
        (RPC_PATH, b"{not json", 400, "malformed RPC body"),
        (RPC_PATH, b'{"args": [{"author": "", "text": "x"}]}', 422, "author: String should have at least 1"),
        (RPC_PATH, b'{"args": [], "kwargs": {}}', 422, "missing a required argument"),
    ],
)
async def test_rpc_explains_bad_calls(cluster: Cluster, path: str, body: bytes, status: int, word: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        before = await _newest_id(client, cluster)
        headers = {"forwarder-signature": sign(cluster.secret.encode(), "POST", path, body)}
        response = await client.post(cluster.primary.url + path, content=body, headers=headers)
        assert response.status_code == status, response.text
        assert word in response.json()["error"]["message"]
        assert await _newest_id(client, cluster) == before


async def test_invalid_input_is_a_422_with_the_reason(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{cluster.replicas[0].url}/api/messages", json={"author": "x" * 41, "text": ""})
    assert response.status_code == 422
    assert "author" in response.text and "text" in response.text


async def test_primary_stopped_gives_503_fast_and_no_hang(cluster: Cluster) -> None:
    replica = cluster.replicas[0]
    await cluster.stop_node(cluster.primary.id)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            with anyio.fail_after(6):  # well within FORWARDER_RPC_TIMEOUT (5 s) + slack
                started = time.monotonic()
                response = await client.post(f"{replica.url}/api/messages", json={"author": "a", "text": "b"})
                elapsed = time.monotonic() - started
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
            assert "cannot connect to the primary" in response.text
            assert elapsed < 5
            # Reads keep working on the replica while the primary is down.
            assert (await client.get(f"{replica.url}/api/messages")).status_code == 200
        with anyio.fail_after(6):
            async with connect(replica.url.replace("http", "ws") + "/live") as socket:
                assert json.loads(await socket.recv())["type"] == "render"
                await socket.send(json.dumps({"type": "post", "author": "a", "text": "b"}))
                reply = await reply_to_post(socket)
        assert reply["type"] == "error" and "cannot connect to the primary" in reply["message"]
    finally:
        with anyio.fail_after(30):
            await cluster.start_node(cluster.primary.id)
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{replica.url}/api/messages", json={"author": "a", "text": "back"})
        assert response.status_code == 201
