"""The off-Fly production topology for real: `litestream replicate` to an S3-compatible server (moto on
loopback) and `restore -f` followers from it, under a 3-node cluster of the example app."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest

from forwarder.dev.s3server import LocalS3Server
from forwarder.engines.litestream_config import S3_INTERVALS, litestream_environ
from forwarder.store import S3Store
from tests.e2e.conftest import running_cluster
from tests.e2e.test_cluster import message_ids
from tests.litestream_guard import launch_problems

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

BUCKET = "forwarder-e2e"


async def test_a_post_to_a_replica_returns_only_once_that_replica_holds_it_through_s3(
    tmp_path: Path, s3_server: LocalS3Server, litestream_launches: list[tuple[list[str], list[str]]]
) -> None:
    store = await s3_server.store(BUCKET, "example/app.db")
    async with running_cluster(
        app="example_app:app", data_dir=tmp_path / "cluster", replicas=2, edge=False, store=store
    ) as cluster:
        assert cluster.intervals == S3_INTERVALS
        # Every Litestream process of the cluster runs against the bucket with the one environment.
        processes = [cluster.replicator.process]
        processes += [n.follower.process for n in cluster.replicas if n.follower and n.follower.process]
        assert len(processes) == 3
        for process in processes:
            assert process.env == litestream_environ(store)
            assert process.env["AWS_EC2_METADATA_DISABLED"] == "true" and "AWS_CA_BUNDLE" not in process.env
            assert launch_problems(process.argv, process.env) == []
        for node in cluster.replicas:
            assert node.follower is not None and node.follower.process is not None
            assert node.follower.process.argv[-1] == store.url()
        assert 'type: "s3"' in cluster.replicator.config_path.read_text()
        assert not (cluster.data_dir / "replica").exists()  # no file store on the side
        before = sum(s3_server.request_counts(BUCKET).values())

        misses = []
        async with httpx.AsyncClient(timeout=10) as writer, httpx.AsyncClient(timeout=10) as reader:
            with anyio.fail_after(100):
                for i in range(200):
                    node = cluster.replicas[i % len(cluster.replicas)]
                    response = await writer.post(f"{node.url}/api/messages", json={"author": "s3", "text": f"m{i}"})
                    writer.cookies.clear()
                    assert response.status_code == 201, response.text
                    assert response.headers["forwarder-node"] == cluster.primary.id
                    assert response.headers["forwarder-forwarded"] == "proxy"
                    message_id = response.json()["id"]
                    if message_id not in await message_ids(reader, node.url):
                        misses.append((i, node.id, message_id))
        assert misses == []
        counts = s3_server.request_counts(BUCKET)
        assert counts["PUT"] > 0 and sum(counts.values()) > before  # the writes really went through the bucket
    # replicate and both followers (at least once each), all checked by the guard.
    assert sum(1 for argv, _ in litestream_launches if "restore" in argv) >= 2
    assert any("replicate" in argv for argv, _ in litestream_launches)


async def test_a_follower_restores_from_the_bucket_alone(tmp_path: Path, s3_server: LocalS3Server) -> None:
    """A replica that starts after the writes restores them from the bucket (no shared directory exists)."""
    store = await s3_server.store(BUCKET, "late/app.db")
    assert isinstance(store, S3Store) and store.plain_http
    async with running_cluster(
        app="example_app:app", data_dir=tmp_path / "cluster", replicas=1, edge=False, store=store
    ) as cluster:
        async with httpx.AsyncClient(timeout=10) as client:
            with anyio.fail_after(30):
                ids = []
                for i in range(5):
                    response = await client.post(
                        f"{cluster.primary.url}/api/messages", json={"author": "p", "text": f"late {i}"}
                    )
                    assert response.status_code == 201, response.text
                    ids.append(response.json()["id"])
                replica = cluster.replicas[0]
                await cluster.restart_node(replica.id)  # wiped, restored from s3 again
                assert set(ids) <= set(await message_ids(client, replica.url))
