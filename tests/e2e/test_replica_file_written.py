"""An app left on a plain writable path writes on replicas: nothing acknowledged is lost, the copy is restored."""

from __future__ import annotations

import sqlite3
import time
import uuid
from contextlib import closing
from pathlib import Path

import anyio
import httpx
import pytest

from forwarder.dev import Cluster
from forwarder.dev.cluster import NodeProcess
from forwarder.dev.replication import read_txid_file

from .conftest import running_cluster

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
WRITES = 40


def rows(database: Path) -> list[tuple[str, str]]:
    with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as db:
        return db.execute("SELECT id, node FROM visits ORDER BY id").fetchall()


def integrity(database: Path) -> str:
    with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


async def healthy(client: httpx.AsyncClient, url: str) -> bool:
    return (await client.get(f"{url}/_forwarder/health")).status_code == 200


async def converged(cluster: Cluster) -> None:
    target = await cluster.replicator.txid()
    async with httpx.AsyncClient(timeout=5) as client:
        for node in cluster.replicas:
            while (
                not await healthy(client, node.url)
                or (read_txid_file(node.database.with_name("app.db-txid")) or 0) < target
            ):
                await anyio.sleep(0.05)


async def visit(client: httpx.AsyncClient, cluster: Cluster, node: NodeProcess, tag: str) -> str:
    visit_id = f"{tag}-{uuid.uuid4().hex[:8]}"
    response = await client.get(f"{node.url}/visit/{visit_id}")
    assert response.status_code == 200, response.text
    assert response.json()["id"] == visit_id
    # The answer is the primary's: the write that counts ran there, and can be read back.
    assert response.headers["forwarder-node"] == cluster.primary.id
    assert response.headers["forwarder-txid"]
    return visit_id


async def test_a_write_on_a_writable_replica_url_is_never_lost_and_the_copy_is_restored(tmp_path: Path) -> None:
    async with running_cluster(
        app="tests.e2e.apps.plain_sqlite:app", data_dir=tmp_path / "c", replicas=2, app_dir=ROOT
    ) as cluster:
        primary = cluster.primary
        acknowledged: list[str] = []
        restore_seconds: list[float] = []
        async with httpx.AsyncClient(timeout=15) as client:
            with anyio.fail_after(100):
                # First with the follower frozen, so the watchdog cannot restore the copy yet: what
                # the user sees meanwhile is stable enough to check.
                watched = cluster.replicas[0]
                cluster.pause_follower(watched.id)
                acknowledged.append(await visit(client, cluster, watched, "frozen"))
                health = await client.get(f"{watched.url}/_forwarder/health")
                assert health.status_code == 503
                problem = " ".join(health.json()["problems"])
                assert "database modified" in problem and str(watched.database) in problem, problem
                assert "mode=ro" in problem and "forwarder.sqlalchemy.create_engine" in problem
                reads = await client.get(f"{watched.url}/visits")
                assert reads.headers["forwarder-node"] == primary.id  # served by the primary meanwhile
                assert set(acknowledged) <= set(reads.json()["ids"])
                cluster.resume_follower(watched.id)
                resumed = time.monotonic()
                while not await healthy(client, watched.url):
                    await anyio.sleep(0.02)
                restore_seconds.append(time.monotonic() - resumed)
                for i in range(WRITES):
                    node = cluster.replicas[i % 2]
                    # Each write lands on a copy restored since the last one: a fresh foreign write.
                    while not await healthy(client, node.url):
                        await anyio.sleep(0.02)
                    acknowledged.append(await visit(client, cluster, node, str(i)))
                    answered = time.monotonic()
                    while not await healthy(client, node.url):
                        await anyio.sleep(0.02)
                    restore_seconds.append(time.monotonic() - answered)
                await converged(cluster)

        on_primary = rows(primary.database)
        assert sorted(visit for visit, _ in on_primary) == sorted(acknowledged), "an acknowledged write was lost"
        assert {node for _, node in on_primary} == {primary.id}
        for node in cluster.nodes:
            assert integrity(node.database) == "ok", node.id
            assert rows(node.database) == on_primary, f"{node.id} differs from the primary"
        for node in cluster.replicas:
            log = (cluster.logs_dir / f"{node.id}.log").read_text()
            assert "database modified" in log and "forwarder.sqlalchemy.create_engine" in log
            assert "running it on the primary instead" in log
        restore_seconds.sort()
        median = restore_seconds[len(restore_seconds) // 2]
        print(
            f"\nforeign write answered (or follower resumed) to copy restored: "
            f"median {median:.3f}s, max {restore_seconds[-1]:.3f}s"
        )
        assert restore_seconds[-1] < 10
