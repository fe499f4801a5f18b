from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from forwarder.dev import Cluster
from forwarder.dev.replication import Replicator
from forwarder.engines.litestream_config import Intervals


@asynccontextmanager
async def running_cluster(**options: Any) -> AsyncIterator[Cluster]:
    """A real cluster (`Cluster(**options)`): uvicorn nodes replicated by Litestream on 127.0.0.1,
    started within 90 s and always stopped, every process, on the way out."""
    cluster = Cluster(**options)
    try:
        with anyio.fail_after(90):
            await cluster.start()
        yield cluster
    finally:
        with anyio.CancelScope(shield=True), anyio.fail_after(60):
            await cluster.stop()


@asynccontextmanager
async def items_replicator(
    base: Path, store: str = "replica", intervals: Intervals | None = None
) -> AsyncIterator[Replicator]:
    """`litestream replicate` of a WAL database (`base/primary/app.db`) with an `items` table, already
    synced to the file store `base/<store>`; stopped on the way out."""
    replicator = Replicator(
        base / "primary" / "app.db",
        base / store,
        base / "primary" / "ls.sock",
        log_path=base / "logs" / "replicate.log",
        intervals=intervals,
    )
    try:
        with anyio.fail_after(20):
            await replicator.start()
            with closing(sqlite3.connect(replicator.database)) as db:
                db.execute("CREATE TABLE items (n INTEGER NOT NULL)")
                db.commit()
            await replicator.engine.commit_position()
        yield replicator
    finally:
        await replicator.stop()


def edge_client(cluster: Cluster, region: str) -> httpx.AsyncClient:
    """A client of the cluster's edge pinned to `region` (`fly-prefer-region`), keeping cookies."""
    assert cluster.edge_url
    return httpx.AsyncClient(
        base_url=cluster.edge_url, headers={"fly-prefer-region": region}, timeout=15, trust_env=False
    )


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    """The example app as one primary and two replicas."""
    async with running_cluster(app="example_app:app", data_dir=tmp_path_factory.mktemp("cluster"), replicas=2) as c:
        yield c
