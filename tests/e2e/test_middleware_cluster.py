"""The complete middleware through the edge (the Fly proxy emulator) on real clusters."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect

from forwarder.dev import Cluster

from .conftest import running_cluster

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.e2e.apps.middleware_app:app"


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    async with running_cluster(
        app=APP,
        data_dir=tmp_path_factory.mktemp("mw"),
        replicas=2,
        app_dir=ROOT,
        env={"FORWARDER_REPLICATION_TIMEOUT": "1", "FORWARDER_ALWAYS_FORWARD": "/ws/always"},
    ) as running:
        yield running


def edge(cluster: Cluster, region: str) -> httpx.AsyncClient:
    """A browser-like client of the edge, pinned to a region, keeping cookies."""
    assert cluster.edge_url
    return httpx.AsyncClient(base_url=cluster.edge_url, headers={"fly-prefer-region": region}, timeout=15)


async def test_a_write_through_the_edge_is_replayed_and_the_next_read_there_shows_it(cluster: Cluster) -> None:
    primary = cluster.primary.id
    misses = []
    async with edge(cluster, "ams") as ams, edge(cluster, "syd") as syd:
        with anyio.fail_after(120):
            for i in range(60):
                client = ams if i % 2 else syd
                wrote = await client.post("/items", json={"value": f"r{i}"})
                assert wrote.status_code == 201, wrote.text
                assert wrote.headers["x-edge-replays"] == "1"  # replayed by the replica to the primary
                assert wrote.json()["node"] == primary
                assert client.cookies.get("__txid") == wrote.headers["forwarder-txid"]
                read = await client.get("/items")
                assert read.json()["node"] != primary, "the read must stay on the replica"
                if wrote.json()["id"] not in [item["id"] for item in read.json()["items"]]:
                    misses.append(i)
    assert misses == []


async def test_the_same_in_proxy_mode_without_the_fly_proxy(cluster: Cluster) -> None:
    replica = cluster.replicas[0]
    async with httpx.AsyncClient(base_url=replica.url, timeout=15) as client:
        for i in range(20):
            wrote = await client.post("/items", json={"value": f"p{i}"})
            assert wrote.status_code == 201
            assert wrote.headers["forwarder-forwarded"] == "proxy"
            client.cookies.clear()  # proxy mode needs no cookie: the answer came after the replica caught up
            ids = [item["id"] for item in (await client.get("/items")).json()["items"]]
            assert wrote.json()["id"] in ids


async def test_a_2mb_upload_goes_by_proxy_in_auto_mode(cluster: Cluster) -> None:
    body = os.urandom(2 * 1024 * 1024)
    async with edge(cluster, "ams") as client:
        response = await client.post("/upload", content=body)
    assert response.status_code == 201, response.text
    assert response.headers["forwarder-forwarded"] == "proxy"
    assert response.headers["x-edge-replays"] == "0"
    assert response.json()["node"] == cluster.primary.id
    assert response.json()["size"] == len(body)
    assert response.json()["sha256"] == hashlib.sha256(body).hexdigest()


async def test_a_cookie_far_ahead_is_dropped_and_the_read_answered(cluster: Cluster) -> None:
    async with edge(cluster, "syd") as client:
        client.cookies.set("__txid", "0fffffffffffffff")
        with anyio.fail_after(10):
            started = time.monotonic()
            response = await client.get("/items")
            elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert "__txid=;" in response.headers["set-cookie"] and "Max-Age=0" in response.headers["set-cookie"]
    assert elapsed < 5


async def test_a_malformed_cookie_is_ignored(cluster: Cluster) -> None:
    async with edge(cluster, "syd") as client:
        client.cookies.set("__txid", "not-a-txid")
        response = await client.get("/items")
    assert response.status_code == 200 and response.json()["node"] == cluster.replicas[1].id


async def test_late_write_discovery_turns_a_readonly_error_into_a_forwarded_success(cluster: Cluster) -> None:
    async with edge(cluster, "ams") as via_edge, httpx.AsyncClient(base_url=cluster.replicas[0].url) as direct:
        replayed = await via_edge.get("/touch", params={"value": "edge"})
        proxied = await direct.get("/touch", params={"value": "direct"})
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["node"] == cluster.primary.id and replayed.headers["x-edge-replays"] == "1"
    assert proxied.status_code == 200, proxied.text
    assert proxied.json()["node"] == cluster.primary.id and proxied.headers["forwarder-forwarded"] == "proxy"


@pytest.mark.parametrize("path", ["/ws/primary", "/ws/always"])
async def test_a_primary_only_websocket_is_served_by_the_primary(cluster: Cluster, path: str) -> None:
    assert cluster.edge_url
    url = cluster.edge_url.replace("http", "ws") + path
    with anyio.fail_after(15):
        # Through the edge: replayed before the handshake.
        async with connect(url, additional_headers={"fly-prefer-region": "ams"}) as socket:
            assert json.loads(await socket.recv()) == {"node": cluster.primary.id}
            if path == "/ws/primary":
                await socket.send("hi")
                assert await socket.recv() == f"{cluster.primary.id}:hi"
        # Straight to a replica: relayed to the primary.
        async with connect(cluster.replicas[1].url.replace("http", "ws") + path) as socket:
            assert json.loads(await socket.recv()) == {"node": cluster.primary.id}
            if path == "/ws/primary":
                await socket.send("there")
                assert await socket.recv() == f"{cluster.primary.id}:there"
        # Other websockets stay on the replica.
        async with connect(cluster.replicas[1].url.replace("http", "ws") + "/ws/local") as socket:
            assert json.loads(await socket.recv()) == {"node": cluster.replicas[1].id}


@pytest.mark.parametrize(("method", "via"), [("GET", "local"), ("POST", "proxy")])
async def test_sse_arrives_event_by_event_through_a_replica(cluster: Cluster, method: str, via: str) -> None:
    # GET: served by the replica, through the edge. POST: straight to the replica, which proxies
    # it to the primary and streams the events back (through the edge it would be replayed).
    arrivals: list[tuple[float, dict[str, object]]] = []
    client = edge(cluster, "ams") if via == "local" else httpx.AsyncClient(base_url=cluster.replicas[0].url)
    async with client:
        with anyio.fail_after(15):
            async with client.stream(method, "/events", params={"count": "5"}) as response:
                assert response.status_code == 200
                assert response.headers.get("forwarder-forwarded", "local") == via
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        arrivals.append((time.time(), json.loads(line[6:])))
    assert [event["i"] for _, event in arrivals] == [0, 1, 2, 3, 4]
    first_arrival = arrivals[0][0]
    last_sent = float(arrivals[-1][1]["sent"])  # type: ignore[arg-type]
    assert first_arrival < last_sent, "the first event must arrive before the last one is produced"


async def test_health_and_metrics_on_every_node(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for node in cluster.nodes:
            health = (await client.get(f"{node.url}/_forwarder/health")).json()
            assert health["node"] == node.id and health["role"] == node.role and health["status"] == "ok"
            assert health["primary"] == cluster.primary.id
            metrics = await client.get(f"{node.url}/_forwarder/metrics")
            assert metrics.status_code == 200 and "forwarder_txid" in metrics.text
        replica_metrics = (await client.get(f"{cluster.replicas[0].url}/_forwarder/metrics")).text
    assert 'forwarder_forwarded_requests_total{mode="replay",reason="method"}' in replica_metrics
    assert 'forwarder_forwarded_requests_total{mode="proxy",reason="method"}' in replica_metrics


async def test_loop_guard_when_replicas_name_the_wrong_primary(tmp_path: Path) -> None:
    # Replicas believe node-2 (a replica) is the primary: the replay lands on a non-primary, which
    # must answer 503 with Retry-After instead of replaying again (the edge would allow 10 hops).
    async with running_cluster(
        app=APP, data_dir=tmp_path, replicas=2, app_dir=ROOT, env={"FORWARDER_PRIMARY_ID": "node-2"}
    ) as broken:
        async with edge(broken, "syd") as client:
            response = await client.post("/items", json={"value": "loop"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.headers["x-edge-replays"] == "1"
    assert "not the primary" in response.text
