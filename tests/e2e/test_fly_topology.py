"""The example app with Fly's own variables (FLY_MACHINE_ID, FLY_REGION, PRIMARY_REGION,
FLY_APP_NAME) as on Fly, through the edge, in replay mode with `instance=` targets."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from forwarder.dev import Cluster

from .conftest import running_cluster

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


@pytest.fixture(scope="module")
async def fly_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    async with running_cluster(
        app="example_app:app",
        data_dir=tmp_path_factory.mktemp("fly"),
        replicas=2,
        regions=["iad", "ams", "syd"],
        fly_app="forwarder-test",
        env={"FORWARDER_MODE": "replay"},
    ) as running:
        yield running


async def test_nodes_take_their_identity_from_fly_variables(fly_cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for node in fly_cluster.nodes:
            assert re.fullmatch(r"[0-9a-f]{14}", node.id)
            health = (await client.get(f"{node.url}/_forwarder/health")).json()
            assert (health["node"], health["region"], health["role"]) == (node.id, node.region, node.role)
            assert health["primary"] == fly_cluster.primary.id
            assert health["primary_region"] == "iad"


async def test_a_replica_names_the_primary_machine_in_fly_replay(fly_cluster: Cluster) -> None:
    replica = fly_cluster.replicas[0]
    async with httpx.AsyncClient(timeout=10) as client:
        # As the Fly proxy delivers it (Fly-Client-IP present), straight to the replica.
        response = await client.post(
            f"{replica.url}/api/messages", json={"author": "fly", "text": "x"}, headers={"fly-client-ip": "1.2.3.4"}
        )
    assert response.status_code == 409
    # The state is sealed with the secret; a replay that cannot reach the primary comes back (fallback).
    sealed = rf"instance={fly_cluster.primary.id};state=method\.\d+\.[0-9a-f]{{32}};fallback=prefer_self"
    assert re.fullmatch(sealed, response.headers["fly-replay"])
    assert response.content == b""


async def test_writes_through_the_edge_land_on_the_primary_and_reads_stay_in_region(fly_cluster: Cluster) -> None:
    assert fly_cluster.edge_url
    for region, replica in zip(("ams", "syd"), fly_cluster.replicas, strict=True):
        async with httpx.AsyncClient(
            base_url=fly_cluster.edge_url, headers={"fly-prefer-region": region}, timeout=10
        ) as client:
            wrote = await client.post("/api/messages", json={"author": region, "text": f"from {region}"})
            assert wrote.status_code == 201, wrote.text
            assert wrote.headers["x-edge-node"] == fly_cluster.primary.id
            assert wrote.headers["x-edge-replays"] == "1"
            read = await client.get("/api/messages")
            assert read.headers["x-edge-node"] == replica.id
            assert wrote.json()["id"] in [m["id"] for m in read.json()["messages"]]
