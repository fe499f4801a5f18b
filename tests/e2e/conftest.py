from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from forwarder.dev import Cluster


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    """A real cluster of the example app: one primary and two replicas, each a uvicorn process,
    replicated by Litestream, on 127.0.0.1. Stopped (every process) when the module is done."""
    running = Cluster(app="example_app:app", data_dir=tmp_path_factory.mktemp("cluster"), replicas=2)
    try:
        with anyio.fail_after(90):
            await running.start()
        yield running
    finally:
        with anyio.CancelScope(shield=True), anyio.fail_after(60):
            await running.stop()


def node_pids(cluster: Cluster) -> list[int]:
    return [pid for node in cluster.nodes if (pid := node.pid) is not None]


def data_dir(cluster: Cluster) -> Path:
    return cluster.data_dir
