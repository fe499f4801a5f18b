"""The node channel on real clusters: a replica sends its forwarded requests to the primary over one
signed websocket (`/_forwarder/channel`), and over plain HTTP when it cannot."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from forwarder.channel.frames import Kind, RequestHead, decode, decode_whole, encode, encode_request
from forwarder.channel.transport import CHANNEL_PATH, signed_handshake
from forwarder.dev import Cluster, NodeProcess
from forwarder.middleware.headers import FORWARDED_BY
from forwarder.node_headers import NODE_SIGNATURE, sign_node_headers

from .conftest import running_cluster

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.e2e.apps.middleware_app:app"

OPENED = "node channel opened by"
"""The primary's log line when it accepts a channel."""
REFUSED = "refused the node channel"
"""The replica's log line when the primary refuses its channel."""
NO_SIGNATURE = "the handshake carries no valid node signature"
"""The cause a refused handshake's body names."""
MAY_HAVE_RUN = "the request may have been executed"
"""What a 504 of a forward whose outcome is unknown says."""
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

Headers = Sequence[tuple[bytes, bytes]]


# The tests on clusters of their own come first: the shared cluster starts with the first test that
# asks for it and runs until the module ends, so it is not idling beside the others' timed faults.


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    """A primary and two replicas with the channel on (the default), every node reached directly."""
    async with running_cluster(
        app=APP, data_dir=tmp_path_factory.mktemp("channel"), replicas=2, app_dir=ROOT, edge=False
    ) as running:
        yield running


def fault_cluster(tmp_path: Path, **env: str) -> AbstractAsyncContextManager[Cluster]:
    """A primary and one replica of its own, for a test that freezes, kills or stops the primary.

    The lag probe is off, so the replica opens its channel on its first forwarded request and
    sends nothing else on it."""
    return running_cluster(
        app=APP,
        data_dir=tmp_path,
        replicas=1,
        app_dir=ROOT,
        edge=False,
        env={"FORWARDER_LAG_PROBE_INTERVAL": "0", **env},
    )


def client(node: NodeProcess, timeout: float = 15) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=node.url, timeout=timeout, trust_env=False)


def log_text(cluster: Cluster, node_id: str) -> str:
    path = cluster.logs_dir / f"{node_id}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def channel_peers(cluster: Cluster) -> list[int]:
    """The client port of every channel the primary accepted, in order (from its log)."""
    pattern = re.escape(OPENED) + r" 127\.0\.0\.1:(\d+)"
    return [int(port) for port in re.findall(pattern, log_text(cluster, cluster.primary.id))]


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """Process `pid` stopped (SIGSTOP) for the block, and always let go on again after (if it lives)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        await anyio.sleep(0.05)


@dataclass(frozen=True)
class Socket:
    local_port: int
    remote_port: int
    unread: int
    """Bytes received on it that the process has not read yet (`rx_queue`)."""


def sockets(pid: int) -> list[Socket]:
    """The established IPv4 TCP connections of process `pid` (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, queues, inode = fields[1], fields[2], fields[3], fields[4], fields[9]
        if state == "01" and inode in inodes:
            port = int(local.split(":")[1], 16)
            found.append(Socket(port, int(remote.split(":")[1], 16), int(queues.split(":")[1], 16)))
    return found


def connections_to_primary(cluster: Cluster, node: NodeProcess) -> set[int]:
    """The local ports of `node`'s open connections to the primary."""
    assert node.pid is not None
    return {s.local_port for s in sockets(node.pid) if s.remote_port == cluster.primary.port}


def channels_of(cluster: Cluster, node: NodeProcess) -> set[int]:
    """The local ports of `node`'s connections to the primary that the primary accepted as channels."""
    return connections_to_primary(cluster, node) & set(channel_peers(cluster))


async def write_and_read_back(http: httpx.AsyncClient, cluster: Cluster, replica: NodeProcess, value: str) -> int:
    """POST /items on `replica`: forwarded, 201 from the primary, and then readable on `replica` itself."""
    wrote = await http.post("/items", json={"value": value})
    assert wrote.status_code == 201, wrote.text
    assert wrote.headers["forwarder-forwarded"] == "proxy"
    assert wrote.json()["node"] == cluster.primary.id
    row_id: int = wrote.json()["id"]
    assert http.cookies.get("__txid") == wrote.headers["forwarder-txid"]  # the primary's Set-Cookie came back
    http.cookies.clear()  # proxy mode answers once the replica holds the write: no cookie needed
    read = await http.get("/items")
    assert read.status_code == 200 and read.json()["node"] == replica.id
    assert row_id in [item["id"] for item in read.json()["items"]]
    return row_id


# -- faults --------------------------------------------------------------------------------------


async def test_a_primary_frozen_before_the_channel_opened_gets_a_quick_503_and_nothing_is_sent(
    tmp_path: Path,
) -> None:
    async with fault_cluster(tmp_path) as cluster:
        replica = cluster.replicas[0]
        pid = cluster.primary.pid
        assert pid is not None
        async with client(replica) as http:
            with anyio.fail_after(60):
                with stopped(pid):
                    # The handshake gets no answer within FORWARDER_CONNECT_TIMEOUT (2 s): nothing was sent.
                    started = time.monotonic()
                    frozen = await http.post("/items", json={"value": "frozen"})
                    elapsed = time.monotonic() - started
                assert frozen.status_code == 503, frozen.text
                assert frozen.headers["retry-after"] == "1"
                assert elapsed < 2 + 2
                await write_and_read_back(http, cluster, replica, "after")
                async with client(cluster.primary) as direct:
                    values = [item["value"] for item in (await direct.get("/items")).json()["items"]]
                assert values == ["after"]


async def test_a_frozen_primary_gets_a_504_after_the_forward_timeout_and_the_next_write_succeeds(
    tmp_path: Path,
) -> None:
    async with fault_cluster(tmp_path, FORWARDER_FORWARD_TIMEOUT="2") as cluster:
        replica = cluster.replicas[0]
        pid = cluster.primary.pid
        assert pid is not None
        async with client(replica) as http:
            with anyio.fail_after(60):
                await write_and_read_back(http, cluster, replica, "before")
                assert len(channel_peers(cluster)) == 1
                with stopped(pid):
                    started = time.monotonic()
                    frozen = await http.post("/items", json={"value": "frozen"})
                    elapsed = time.monotonic() - started
                assert frozen.status_code == 504, frozen.text
                assert MAY_HAVE_RUN in frozen.text
                assert "retry-after" not in frozen.headers  # not safe to retry
                assert 2 <= elapsed < 6
                await write_and_read_back(http, cluster, replica, "after")
                assert len(channel_peers(cluster)) == 1, "the timeout cancelled its stream, not the channel"


@pytest.mark.parametrize("node_channel", ["true", "false"], ids=["channel", "http"])
async def test_writes_piled_up_for_a_frozen_primary_are_still_answered_within_the_forward_timeout(
    tmp_path: Path, node_channel: str
) -> None:
    # 128 writes of 60 KiB each (under FORWARDER_BUFFER_BODY: all for the channel) to a frozen
    # primary: 7.5 MiB, more than the sockets between the nodes buffer. Over HTTP each write's send
    # is bounded by FORWARDER_FORWARD_TIMEOUT (a 504 after about 2 s); on the channel it must be too.
    async with fault_cluster(tmp_path, FORWARDER_FORWARD_TIMEOUT="2", FORWARDER_NODE_CHANNEL=node_channel) as cluster:
        replica = cluster.replicas[0]
        pid = cluster.primary.pid
        assert pid is not None
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=replica.url, timeout=60, limits=limits, trust_env=False) as http:
            with anyio.fail_after(60):
                await write_and_read_back(http, cluster, replica, "before")
                bodies = [json.dumps({"value": f"{i}:" + "x" * 60 * 1024}) for i in range(128)]
                headers = {"content-type": "application/json"}
                with stopped(pid):
                    started = time.monotonic()
                    with anyio.move_on_after(10) as waited:
                        answers = await asyncio.gather(
                            *(http.post("/items", content=body, headers=headers) for body in bodies)
                        )
                    elapsed = time.monotonic() - started
                assert not waited.cancelled_caught, "writes to the frozen primary still unanswered after 10 s"
                assert {a.status_code for a in answers} <= {503, 504}, [a.text for a in answers]
                assert elapsed < 2 + 4
                await write_and_read_back(http, cluster, replica, "after")


async def test_a_primary_killed_with_a_write_in_flight_gets_a_prompt_504_and_a_new_channel_once_back(
    tmp_path: Path,
) -> None:
    async with fault_cluster(tmp_path, FORWARDER_FORWARD_TIMEOUT="30") as cluster:
        replica, primary = cluster.replicas[0], cluster.primary
        async with client(replica, timeout=60) as http:
            with anyio.fail_after(90):
                await write_and_read_back(http, cluster, replica, "before")
                assert len(channel_peers(cluster)) == 1
                channel = channels_of(cluster, replica)
                assert len(channel) == 1
                pid = primary.pid
                assert pid is not None and primary.app is not None

                def unread() -> int:
                    return sum(s.unread for s in sockets(pid) if s.remote_port in channel)

                with stopped(pid):
                    in_flight = asyncio.create_task(http.post("/items", json={"value": "in flight"}))
                    # Sent: the frozen primary's end of the channel holds bytes it has not read.
                    await until(lambda: in_flight.done() or unread() > 0, "the forwarded write to reach the primary")
                    assert not in_flight.done(), in_flight.result().text
                    killed = time.monotonic()
                    os.kill(pid, signal.SIGKILL)
                response = await in_flight
                elapsed = time.monotonic() - killed
                assert response.status_code == 504, response.text
                assert MAY_HAVE_RUN in response.text
                assert elapsed < 5, f"answered {elapsed:.1f}s after the kill, not when the channel broke"
                # Reaped first: the kill is delivered, and its exit status known, before the restart.
                assert await primary.app.wait(10) == -signal.SIGKILL
                await cluster.start_node(primary.id)
                await write_and_read_back(http, cluster, replica, "after")
                assert len(channel_peers(cluster)) == 2, "no new channel to the restarted primary"


async def test_a_write_while_the_primary_is_down_gets_a_quick_503_writes_nothing_and_the_next_one_succeeds(
    tmp_path: Path,
) -> None:
    async with fault_cluster(tmp_path) as cluster:
        replica = cluster.replicas[0]
        async with client(replica) as http:
            with anyio.fail_after(60):
                await write_and_read_back(http, cluster, replica, "before")
                assert len(channel_peers(cluster)) == 1
                await cluster.stop_node(cluster.primary.id)
                started = time.monotonic()
                down = await http.post("/items", json={"value": "while down"})
                elapsed = time.monotonic() - started
                assert down.status_code == 503, down.text
                assert down.headers["retry-after"] == "1"
                assert "cannot connect to the primary" in down.text
                assert elapsed < 2 + 2  # FORWARDER_CONNECT_TIMEOUT (2 s) and some slack
                values = await anyio.to_thread.run_sync(item_values, cluster.primary.database)
                assert "before" in values and "while down" not in values
                await cluster.start_node(cluster.primary.id)
                await write_and_read_back(http, cluster, replica, "after")
                assert len(channel_peers(cluster)) == 2, "no new channel to the primary once it was back"


def item_values(database: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        return [value for (value,) in conn.execute("SELECT value FROM items")]


async def start_slow_write(http: httpx.AsyncClient, cluster: Cluster, value: str) -> asyncio.Task[httpx.Response]:
    """POST /items?delay=2 through `http` (a replica), returned once its row is committed on the
    primary and its answer is still to come."""
    slow = asyncio.create_task(http.post("/items", params={"delay": "2"}, json={"value": value}))
    async with client(cluster.primary) as direct:
        committed = False
        deadline = time.monotonic() + 10
        while not committed and not slow.done():
            assert time.monotonic() < deadline, "the slow write did not reach the primary"
            await anyio.sleep(0.05)
            committed = value in [item["value"] for item in (await direct.get("/items")).json()["items"]]
    assert not slow.done(), slow.result().text
    return slow


@contextlib.asynccontextmanager
async def slow_write_in_flight(
    cluster: Cluster, value: str
) -> AsyncIterator[tuple[httpx.AsyncClient, asyncio.Task[httpx.Response]]]:
    """On the first replica: one write read back ("before"), then `start_slow_write(value)`; yields
    a client of that replica and the slow write, whose answer is still to come."""
    replica = cluster.replicas[0]
    async with client(replica) as http, client(replica) as other:
        await write_and_read_back(http, cluster, replica, "before")
        yield http, await start_slow_write(other, cluster, value)


async def test_a_replica_killed_with_a_write_in_flight_leaves_the_primary_to_finish_it_and_serve_on(
    tmp_path: Path,
) -> None:
    async with fault_cluster(tmp_path) as cluster:
        replica, primary = cluster.replicas[0], cluster.primary
        with anyio.fail_after(90):
            async with slow_write_in_flight(cluster, "in flight") as (http, slow):  # committed; answer 2 s away
                assert replica.pid is not None and replica.app is not None
                os.kill(replica.pid, signal.SIGKILL)
                with pytest.raises(httpx.TransportError):
                    await slow
                assert await replica.app.wait(10) == -signal.SIGKILL
                async with client(primary) as direct:
                    # The request the dead replica sent committed on the primary, once, and the
                    # primary serves on (its end of the channel saw the disconnect).
                    values = [item["value"] for item in (await direct.get("/items")).json()["items"]]
                    assert values.count("in flight") == 1, values
                    assert (await direct.post("/items", json={"value": "direct"})).status_code == 201
                primary_log = log_text(cluster, primary.id)
                assert "Traceback" not in primary_log and "Exception in ASGI" not in primary_log, primary_log[-2000:]
                await cluster.start_node(replica.id)
                await write_and_read_back(http, cluster, replica, "after")
                assert len(channel_peers(cluster)) == 2, "the restarted replica opened a channel of its own"


@pytest.mark.parametrize("node_channel", ["true", "false"], ids=["channel", "http"])
async def test_a_graceful_stop_of_the_primary_runs_a_write_in_flight_once_and_answers_it_over_http_only(
    tmp_path: Path, node_channel: str
) -> None:
    # uvicorn's graceful shutdown lets the HTTP requests it runs finish and answer, but closes every
    # websocket at once (1012): over the channel the write still runs to its end on the primary,
    # only its answer is lost, so the replica says it may have run (README, Failure behaviour).
    async with fault_cluster(tmp_path, FORWARDER_NODE_CHANNEL=node_channel) as cluster:
        with anyio.fail_after(60):
            async with slow_write_in_flight(cluster, "in flight") as (_, slow):
                await cluster.stop_node(cluster.primary.id)
                answer = await slow
                if node_channel == "false":
                    assert answer.status_code == 201, answer.text
                    assert answer.json()["node"] == cluster.primary.id
                else:
                    assert answer.status_code == 504, answer.text
                    assert MAY_HAVE_RUN in answer.text and "1012" in answer.text
                values = await anyio.to_thread.run_sync(item_values, cluster.primary.database)
                assert values.count("in flight") == 1, values


@pytest.mark.parametrize("node_channel", ["true", "false"], ids=["channel", "http"])
async def test_a_request_with_any_token_as_method_is_forwarded_without_breaking_the_others(
    tmp_path: Path, node_channel: str
) -> None:
    # RFC 9110 methods are tokens: M-SEARCH (UPnP), VERSION-CONTROL (WebDAV) are valid, and any
    # client may send one. The app answers it (405 here); requests beside it are not disturbed.
    async with fault_cluster(tmp_path, FORWARDER_NODE_CHANNEL=node_channel) as cluster:
        replica = cluster.replicas[0]
        with anyio.fail_after(60):
            async with slow_write_in_flight(cluster, "beside") as (http, slow):
                opened = len(channel_peers(cluster))
                odd = await http.request("M-SEARCH", "/items")
                assert odd.status_code == 405, odd.text
                assert odd.headers["forwarder-forwarded"] == "proxy"
                answer = await slow
                assert answer.status_code == 201, answer.text
                await write_and_read_back(http, cluster, replica, "after")
                assert len(channel_peers(cluster)) == opened, "the channel was closed and opened again"


# -- without the channel -----------------------------------------------------------------------


async def ten_forwarded_writes(tmp_path: Path, label: str, **env: str) -> Cluster:
    """A cluster of its own with `env`; ten writes through its replica, each read back there. Returns
    the cluster, stopped, for its logs."""
    async with fault_cluster(tmp_path, **env) as cluster:
        replica = cluster.replicas[0]
        async with client(replica) as http:
            with anyio.fail_after(60):
                for i in range(10):
                    await write_and_read_back(http, cluster, replica, f"{label}-{i}")
    return cluster


async def test_a_primary_without_websockets_refuses_the_channel_and_writes_go_over_http(tmp_path: Path) -> None:
    cluster = await ten_forwarded_writes(tmp_path, "http", UVICORN_WS="none")
    primary_log = log_text(cluster, cluster.primary.id)
    assert "Unsupported upgrade request" in primary_log  # UVICORN_WS=none reached uvicorn
    assert OPENED not in primary_log
    assert log_text(cluster, cluster.replicas[0].id).count(REFUSED) == 1, "asked again before a minute passed"


async def test_with_the_channel_turned_off_writes_go_over_http_and_no_channel_opens(tmp_path: Path) -> None:
    cluster = await ten_forwarded_writes(tmp_path, "off", FORWARDER_NODE_CHANNEL="false")
    assert OPENED not in log_text(cluster, cluster.primary.id)
    assert REFUSED not in log_text(cluster, cluster.replicas[0].id)


# -- the channel carries the forwarded requests ------------------------------------------------


async def test_forwarded_writes_share_one_channel_per_replica_and_are_read_back_there(cluster: Cluster) -> None:
    replica = cluster.replicas[0]
    async with client(replica) as http:
        with anyio.fail_after(90):
            await write_and_read_back(http, cluster, replica, "first")
            # Every replica holds one connection to the primary, and it is a channel the primary
            # accepted (the lag probe opens one on a replica that forwarded nothing yet).
            await until(
                lambda: all(len(channels_of(cluster, n)) == 1 for n in cluster.replicas), "a channel from each replica"
            )
            channel = connections_to_primary(cluster, replica)
            assert channel == channels_of(cluster, replica), "the replica has connections to the primary besides it"
            opened = len(channel_peers(cluster))
            for i in range(50):
                await write_and_read_back(http, cluster, replica, f"one-{i}")
            assert connections_to_primary(cluster, replica) == channel, "the writes did not all go on the one channel"
            assert len(channel_peers(cluster)) == opened, "a channel was opened again for the writes"


async def test_streamed_responses_arrive_whole_over_the_channel(cluster: Cluster) -> None:
    replica = cluster.replicas[1]
    size = 1024 * 1024 + 123  # four times the stream's window: the replica's credit must keep it coming
    async with client(replica) as http:
        with anyio.fail_after(30):
            await until(lambda: len(channels_of(cluster, replica)) == 1, "the replica's channel")
            before = connections_to_primary(cluster, replica)
            async with http.stream("POST", "/events", params={"count": "3"}) as response:
                assert response.status_code == 200
                assert response.headers["forwarder-forwarded"] == "proxy"
                events = [json.loads(line[6:]) async for line in response.aiter_lines() if line.startswith("data: ")]
            assert [event["i"] for event in events] == [0, 1, 2]
            assert {event["node"] for event in events} == {cluster.primary.id}
            blob = await http.post("/blob", params={"size": str(size), "seed": "channel"})
            assert blob.status_code == 200 and blob.headers["forwarder-forwarded"] == "proxy"
            assert len(blob.content) == size
            assert blob.content == random.Random("channel").randbytes(size)
            assert connections_to_primary(cluster, replica) <= before, "a response came over another connection"


async def test_a_stalled_streamed_response_holds_only_its_own_stream(cluster: Cluster) -> None:
    replica = cluster.replicas[1]
    size = 16 * 1024 * 1024  # far more than the sockets between this test and the primary buffer

    def unread_here() -> int:
        return sum(s.unread for s in sockets(os.getpid()) if s.remote_port == replica.port)

    async with client(replica, timeout=30) as reader, client(replica) as http:
        with anyio.fail_after(60):
            await until(lambda: len(channels_of(cluster, replica)) == 1, "the replica's channel")
            async with reader.stream("POST", "/blob", params={"size": str(size), "seed": "stall"}) as stalled:
                assert stalled.status_code == 200 and stalled.headers["forwarder-forwarded"] == "proxy"
                # Its body piles up unread here, back to the primary, which waits for the replica's credit.
                await until(lambda: unread_here() >= 64 * 1024, "the stalled response's bytes to arrive")
                started = time.monotonic()
                await write_and_read_back(http, cluster, replica, "beside a stalled response")
                assert time.monotonic() - started < 5
                body = b"".join([chunk async for chunk in stalled.aiter_bytes()])
            assert body == random.Random("stall").randbytes(size)


async def test_a_streamed_upload_over_64_kib_goes_over_http_and_arrives_whole(cluster: Cluster) -> None:
    replica = cluster.replicas[1]
    body = os.urandom(300 * 1024)
    chunks = [body[offset : offset + 30 * 1024] for offset in range(0, len(body), 30 * 1024)]
    with anyio.fail_after(60):
        await until(lambda: len(channels_of(cluster, replica)) == 1, "the replica's channel")
        channel = connections_to_primary(cluster, replica)
        assert channel == channels_of(cluster, replica), "the replica has connections to the primary besides it"
        streamed_on: set[int] = set()

        async def upload() -> AsyncIterator[bytes]:
            for index, chunk in enumerate(chunks):
                if index == len(chunks) // 2:
                    # 150 KiB sent, past FORWARDER_BUFFER_BODY: the replica streams the body to the
                    # primary while it arrives, on an HTTP connection of its own.
                    await until(lambda: bool(connections_to_primary(cluster, replica) - channel), "an HTTP connection")
                    streamed_on.update(connections_to_primary(cluster, replica) - channel)
                yield chunk

        async with client(replica) as http:
            response = await http.post("/upload", content=upload())
            assert response.status_code == 201, response.text
            assert response.headers["forwarder-forwarded"] == "proxy"
            assert response.json()["node"] == cluster.primary.id
            assert response.json()["size"] == len(body)
            assert response.json()["sha256"] == hashlib.sha256(body).hexdigest()
            http.cookies.clear()
            read = await http.get("/items")
            assert response.json()["id"] in [item["id"] for item in read.json()["items"]]
        assert streamed_on and not streamed_on & set(channel_peers(cluster))
        assert channels_of(cluster, replica) == channel, "the channel did not survive the upload beside it"


async def test_64_concurrent_forwarded_writes_all_succeed_on_the_channel(cluster: Cluster) -> None:
    replica = cluster.replicas[0]
    async with client(replica, timeout=30) as http:
        with anyio.fail_after(60):
            await until(lambda: len(channels_of(cluster, replica)) == 1, "the replica's channel")
            before = connections_to_primary(cluster, replica)
            responses = await asyncio.gather(*(http.post("/items", json={"value": f"many-{i}"}) for i in range(64)))
            failed = [(r.status_code, r.text) for r in responses if r.status_code != 201]
            assert failed == []
            ids = [r.json()["id"] for r in responses]
            assert len(set(ids)) == 64
            assert {r.json()["node"] for r in responses} == {cluster.primary.id}
            http.cookies.clear()
            read = await http.get("/items")
            assert read.json()["node"] == replica.id
            assert set(ids) <= {item["id"] for item in read.json()["items"]}
            assert connections_to_primary(cluster, replica) <= before, "some writes went over another connection"


# -- who may open a channel ---------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


async def raw_handshake(node: NodeProcess, headers: Headers) -> Reply:
    """A websocket handshake for the channel, written by hand on a new connection to `node`."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {CHANNEL_PATH} HTTP/1.1",
        f"Host: 127.0.0.1:{node.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name.decode('latin-1')}: {value.decode('latin-1')}" for name, value in headers),
    ]
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        status_line, *header_lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").strip().split("\r\n")
        fields = [line.partition(":") for line in header_lines]
        reply = Reply(int(status_line.split(" ")[1]), {k.strip().lower(): v.strip() for k, _, v in fields}, b"")
        if reply.status == 101:
            expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
            assert reply.headers["sec-websocket-accept"] == expected
        else:
            reply.body = await reader.readexactly(int(reply.headers["content-length"]))
        return reply
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def channel_url(node: NodeProcess) -> str:
    return node.url.replace("http://", "ws://") + CHANNEL_PATH


def connect_channel(node: NodeProcess, headers: Headers) -> connect:
    return connect(
        channel_url(node),
        additional_headers=[(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers],
        proxy=None,
        open_timeout=10,
    )


ME = [(FORWARDED_BY, b"node-test")]


def forged(secret: bytes) -> dict[str, list[tuple[bytes, bytes]]]:
    """Handshake headers no node of the cluster (whose secret is `secret`) would send."""
    now = time.time()
    return {
        "no node header": [],
        "forwarded-by, unsigned": ME,
        "signed with another secret": sign_node_headers(b"not the cluster secret", "GET", CHANNEL_PATH, ME),
        "signed 10 minutes ago": sign_node_headers(secret, "GET", CHANNEL_PATH, ME, now=now - 600),
        "signed 10 minutes ahead": sign_node_headers(secret, "GET", CHANNEL_PATH, ME, now=now + 600),
        "signed for POST": sign_node_headers(secret, "POST", CHANNEL_PATH, ME),
        "signed for another path": sign_node_headers(secret, "GET", "/items", ME),
        "signature not in the format": [*ME, (NODE_SIGNATURE, b"t=" + str(int(now)).encode() + b",v1=00")],
    }


@pytest.mark.parametrize("case", list(forged(b"x")))
async def test_a_handshake_without_a_valid_fresh_signature_is_refused_with_403(cluster: Cluster, case: str) -> None:
    headers = forged(cluster.secret.encode())[case]
    with anyio.fail_after(15):
        reply = await raw_handshake(cluster.primary, headers)
        assert reply.status == 403, reply
        assert reply.headers["content-type"].startswith("text/plain")
        assert NO_SIGNATURE in reply.body.decode()
        with pytest.raises(InvalidStatus) as refused:
            async with connect_channel(cluster.primary, headers):
                pass
        assert refused.value.response.status_code == 403
        assert NO_SIGNATURE in bytes(refused.value.response.body).decode()
    assert "refused a node channel from 127.0.0.1:" in log_text(cluster, cluster.primary.id)


async def test_a_validly_signed_handshake_is_accepted_and_its_requests_are_served(cluster: Cluster) -> None:
    headers = signed_handshake(cluster.secret.encode(), "node-test")
    with anyio.fail_after(15):
        assert (await raw_handshake(cluster.primary, headers)).status == 101
        async with connect_channel(cluster.primary, headers) as channel:
            host = [(b"host", f"127.0.0.1:{cluster.primary.port}".encode())]
            await channel.send(encode_request(7, RequestHead("GET", b"/items", host), b""))
            frame = decode(await binary(channel))
            assert frame.kind is Kind.WHOLE and frame.stream == 7
            head, body = decode_whole(frame.payload)
            assert head.status == 200
            assert json.loads(body)["node"] == cluster.primary.id


async def binary(channel: ClientConnection) -> bytes:
    message = await channel.recv()
    assert isinstance(message, bytes), message
    return message


GARBAGE: dict[str, bytes | str] = {
    "3 bytes": b"\x01\x02\x03",
    "an unknown kind": bytes([99]) + (1).to_bytes(4, "big") + b"payload",
    "a START frame from the replica": encode(Kind.START, 1, b'{"s":200,"h":[]}'),
    "a text message": "hello",
}
BAD_HEADS: dict[str, bytes] = {
    "not JSON": encode(Kind.REQUEST, 1, (3).to_bytes(4, "big") + b"{{{"),
    "running past the frame": encode(Kind.REQUEST, 1, (1000).to_bytes(4, "big") + b"{}"),
    "with CRLF in a header": encode_request(1, RequestHead("GET", b"/items", [(b"x", b"a\r\nb: c")]), b""),
}


@pytest.mark.parametrize("garbage", list(GARBAGE))
async def test_a_malformed_message_closes_the_channel_with_1002_and_the_primary_serves_on(
    cluster: Cluster, garbage: str
) -> None:
    with anyio.fail_after(15):
        async with connect_channel(cluster.primary, signed_handshake(cluster.secret.encode(), "node-test")) as channel:
            await channel.send(GARBAGE[garbage])
            with pytest.raises(ConnectionClosed) as closed:
                await channel.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1002, closed.value
        async with client(cluster.primary) as http:
            assert (await http.get("/items")).status_code == 200
        async with client(cluster.replicas[0]) as http:
            await write_and_read_back(http, cluster, cluster.replicas[0], f"after {garbage}")


@pytest.mark.parametrize("bad", list(BAD_HEADS))
async def test_a_request_head_that_is_not_one_gets_400_and_the_channel_serves_on(cluster: Cluster, bad: str) -> None:
    # The frame arrived whole and names its stream: only that request is refused, so nothing a
    # client sends through a replica can close the channel other requests share.
    with anyio.fail_after(15):
        async with connect_channel(cluster.primary, signed_handshake(cluster.secret.encode(), "node-test")) as channel:
            await channel.send(BAD_HEADS[bad])
            frame = decode(await channel.recv(decode=False))
            head, body = decode_whole(frame.payload)
            assert (frame.stream, head.status) == (1, 400), body
            assert b"frame" in body, "the answer says what was wrong with it"
            await channel.send(encode_request(2, RequestHead("GET", b"/items", [(b"host", b"p")]), b""))
            frame = decode(await channel.recv(decode=False))
            assert (frame.stream, decode_whole(frame.payload)[0].status) == (2, 200)
