"""The `/live` websocket protocol of the example app, on a real 3-node cluster (Litestream, loopback)."""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from forwarder.dev import Cluster, NodeProcess

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

Event = dict[str, Any]


def live_url(node: NodeProcess) -> str:
    return node.url.replace("http://", "ws://", 1) + "/live"


class Live:
    """A `/live` socket that keeps every render it receives: a render may arrive before the reply
    the test is waiting for (the node's position advanced while the handler was finishing), and
    must still count when the test then looks for it."""

    def __init__(self, socket: ClientConnection, first: Event) -> None:
        self.socket = socket
        self.first = first
        self.renders: list[Event] = [first]

    async def receive(self) -> Event:
        event: Event = json.loads(await self.socket.recv())
        if event["type"] == "render":
            self.renders.append(event)
        return event

    async def reply(self) -> Event:
        """The next event that is not a `render`."""
        while True:
            event = await self.receive()
            if event["type"] != "render":
                return event

    async def post(self, text: str, author: str = "live") -> Event:
        await self.socket.send(json.dumps({"type": "post", "author": author, "text": text}))
        return await self.reply()

    async def render_where(self, matches: Callable[[Event], bool], timeout: float) -> Event:
        """The first render received so far or from now on that `matches`; fails after `timeout` seconds."""
        for event in self.renders:
            if matches(event):
                return event
        return await self.next_render(matches, timeout)

    async def next_render(self, matches: Callable[[Event], bool], timeout: float) -> Event:
        """The next render not received yet that `matches`; fails after `timeout` seconds."""
        with anyio.fail_after(timeout):
            while True:
                event = await self.receive()
                if event["type"] == "render" and matches(event):
                    return event


@contextlib.asynccontextmanager
async def live(node: NodeProcess) -> AsyncIterator[Live]:
    """A session on `node`, once its first message (which must be a render) has arrived."""
    async with connect(live_url(node)) as socket:
        first: Event = json.loads(await socket.recv())
        assert first["type"] == "render", first
        yield Live(socket, first)


def shows(text: str) -> Callable[[Event], bool]:
    return lambda event: text in event["html"]


def anything(event: Event) -> bool:
    return True


async def board(client: httpx.AsyncClient, node: NodeProcess) -> Event:
    response = await client.get(f"{node.url}/api/messages")
    assert response.status_code == 200, response.text
    body: Event = response.json()
    return body


async def test_every_node_sends_a_render_on_connect(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        with anyio.fail_after(20):
            for node in cluster.nodes:
                async with live(node) as session:
                    first = session.first
                    assert re.fullmatch(r"[0-9a-f]{16}", first["txid"]), first["txid"]
                    assert first["node"] == node.id
                    assert f'data-node="{node.id}"' in first["html"]
                    assert f'data-region="{node.region}"' in first["html"]
                    assert 'data-slot="messages"' in first["html"]
                    # Rendered from this node's replica: never ahead of what the node reports next.
                    assert (await board(client, node))["txid"] >= first["txid"]


async def test_a_post_on_one_replica_is_pushed_to_every_other_node(cluster: Cluster) -> None:
    writer_node, other = cluster.replicas
    text = f"hello from {writer_node.region} {uuid.uuid4()}"
    with anyio.fail_after(30):
        async with live(writer_node) as writer, live(other) as watcher, live(cluster.primary) as primary:
            started = time.monotonic()
            ack = await writer.post(text)
            assert ack["type"] == "ack", ack
            assert ack["message"]["text"] == text and ack["message"]["author"] == "live"
            await writer.render_where(shows(text), timeout=2)
            pushed = await watcher.render_where(shows(text), timeout=5)
            assert pushed["node"] == other.id
            assert time.monotonic() - started < 5
            await primary.render_where(shows(text), timeout=5)


async def test_a_post_on_the_primary_is_pushed_to_the_replicas(cluster: Cluster) -> None:
    # On the primary a local write does not move the engine by itself; the post handler must.
    text = f"from the primary {uuid.uuid4()}"
    with anyio.fail_after(30):
        async with (
            live(cluster.primary) as writer,
            live(cluster.replicas[0]) as first,
            live(cluster.replicas[1]) as second,
        ):
            ack = await writer.post(text)
            assert ack["type"] == "ack", ack
            await writer.render_where(shows(text), timeout=2)
            for session in (first, second):
                await session.render_where(shows(text), timeout=5)


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", 'JSON object with a "type"'),
        ("42", 'JSON object with a "type"'),
        ('{"author": "a", "text": "b"}', 'JSON object with a "type"'),
        ('{"type": "delete", "id": 1}', "unknown event type 'delete'"),
        (b"\x00\x01", "JSON text frames, not binary"),
        ('{"type": "post", "text": "' + "x" * 20000 + '"}', "event too large"),
    ],
)
async def test_a_malformed_event_gets_an_error_and_the_socket_stays_open(
    cluster: Cluster, frame: str | bytes, words: str
) -> None:
    with anyio.fail_after(20):
        async with live(cluster.replicas[0]) as session:
            await session.socket.send(frame)
            error = await session.reply()
            assert error["type"] == "error", error
            assert words in error["message"]
            # Still open and still working.
            ack = await session.post(f"after a bad event {uuid.uuid4()}")
            assert ack["type"] == "ack", ack


@pytest.mark.parametrize(
    ("event", "words"),
    [
        ({"author": "", "text": "x"}, "author: String should have at least 1 character"),
        ({"author": "a" * 41, "text": "x"}, "author: String should have at most 40 characters"),
        ({"author": "a", "text": ""}, "text: String should have at least 1 character"),
        ({"author": "a", "text": "t" * 501}, "text: String should have at most 500 characters"),
        ({"author": "a"}, "text: Field required"),
        ({"author": "a", "text": 5}, "text: Input should be a valid string"),
    ],
)
async def test_an_invalid_post_gets_the_reason_and_stores_nothing(cluster: Cluster, event: Event, words: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        with anyio.fail_after(20):
            before = await board(client, cluster.primary)
            async with live(cluster.replicas[1]) as session:
                await session.socket.send(json.dumps({"type": "post", **event}))
                error = await session.reply()
                assert error["type"] == "error", error
                assert words in error["message"]
            after = await board(client, cluster.primary)
    assert [m["id"] for m in after["messages"]] == [m["id"] for m in before["messages"]]


async def test_an_ack_comes_only_once_the_local_replica_holds_the_message(cluster: Cluster) -> None:
    # No waiting between posts and reads: each ack must mean "this node's database has it".
    misses = []
    async with httpx.AsyncClient(timeout=10) as client:
        with anyio.fail_after(90):
            for node in cluster.nodes:
                async with live(node) as session:
                    for i in range(30):
                        ack = await session.post(f"{node.id} #{i}")
                        assert ack["type"] == "ack", ack
                        seen = await board(client, node)
                        if ack["message"]["id"] not in [m["id"] for m in seen["messages"]]:
                            misses.append((node.id, i, "not in GET"))
                        if seen["txid"] < ack["txid"]:
                            misses.append((node.id, i, f"GET txid {seen['txid']} < ack txid {ack['txid']}"))
                    # The poster's own page is rendered with its last message.
                    await session.render_where(shows(f'id="m-{ack["message"]["id"]}"'), timeout=2)
    assert misses == []


async def test_user_text_is_escaped_in_renders(cluster: Cluster) -> None:
    marker = uuid.uuid4().hex
    text = f'<img src=x onerror="alert(1)"> {marker} & more'
    with anyio.fail_after(20):
        async with live(cluster.replicas[0]) as session:
            ack = await session.post(text, author="<b>mallory</b>")
            assert ack["type"] == "ack", ack
            event = await session.render_where(shows(marker), timeout=2)
    assert "<img src=x" not in event["html"] and "<b>mallory" not in event["html"]
    assert f"&lt;img src=x onerror=&quot;alert(1)&quot;&gt; {marker} &amp; more" in event["html"]
    assert "&lt;b&gt;mallory&lt;/b&gt;" in event["html"]


async def test_a_burst_of_writes_is_coalesced_and_ends_with_the_latest_state(cluster: Cluster) -> None:
    batch = uuid.uuid4().hex[:8]
    texts = [f"burst {batch} {i}" for i in range(40)]
    async with httpx.AsyncClient(timeout=10) as client:
        with anyio.fail_after(30):
            async with live(cluster.replicas[0]) as session:

                async def write(text: str) -> None:
                    response = await client.post(
                        f"{cluster.primary.url}/api/messages", json={"author": "b", "text": text}
                    )
                    assert response.status_code == 201, response.text

                started = time.monotonic()
                async with anyio.create_task_group() as tasks:
                    for text in texts:
                        tasks.start_soon(write, text)
                latest = session.renders[-1]
                while not all(text in latest["html"] for text in texts):
                    latest = await session.next_render(anything, timeout=5)
                elapsed = time.monotonic() - started
                renders = len(session.renders) - 1
    # At most one render per 50 ms (plus the one in flight when the burst began).
    assert renders <= elapsed / 0.05 + 2, (renders, elapsed)


async def test_the_page_is_rendered_on_the_server_and_serves_its_client(cluster: Cluster) -> None:
    node = cluster.replicas[0]
    text = f"server side {uuid.uuid4()}"
    async with httpx.AsyncClient(timeout=10) as client:
        created = await client.post(f"{cluster.primary.url}/api/messages", json={"author": "page", "text": text})
        assert created.status_code == 201
        with anyio.fail_after(10):
            while text not in (page := await client.get(f"{node.url}/")).text:
                await anyio.sleep(0.05)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        html = page.text
        assert f'data-node="{node.id}"' in html and f'data-region="{node.region}"' in html
        for asset, kind in (("app.js", "javascript"), ("app.css", "text/css")):
            match = re.search(rf'"(/static/{re.escape(asset)}\?v=[0-9a-f]+)"', html)
            assert match, f"the page does not link {asset}"
            response = await client.get(f"{node.url}{match.group(1)}")
            assert response.status_code == 200 and kind in response.headers["content-type"]


async def test_the_form_posts_without_javascript(cluster: Cluster) -> None:
    node = cluster.replicas[1]
    text = f"no script {uuid.uuid4()}"
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{node.url}/", data={"author": "plain", "text": text})
        assert response.status_code == 303 and response.headers["location"] == "/"
        # The forwarded POST answered only once this replica held the message.
        client.cookies.clear()
        assert text in (await client.get(f"{node.url}/")).text
        invalid = await client.post(f"{node.url}/", data={"author": "", "text": "x"})
        assert invalid.status_code == 422
        assert "author: String should have at least 1 character" in invalid.text
