from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from forwarder.dev import Cluster

from ..e2e.conftest import running_cluster


@pytest.fixture(scope="session")
async def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    """The example app as a primary and one replica, real uvicorn + Litestream on 127.0.0.1, with
    the edge (Fly proxy emulator) in front; shared by the security modules, always stopped.
    `/live` is always forwarded, so a replica relays that websocket to the primary."""
    async with running_cluster(
        app="example_app:app",
        data_dir=tmp_path_factory.mktemp("security-cluster"),
        replicas=1,
        env={"FORWARDER_ALWAYS_FORWARD": "/live"},
    ) as cluster:
        yield cluster
