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


@pytest.fixture(scope="session")
async def h11_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    """The same cluster with its nodes on uvicorn's h11 parser instead of httptools (`forwarder dev`'s
    default): h11 hands the app an absolute-form target as it came, so the middleware refuses it."""
    async with running_cluster(
        app="example_app:app",
        data_dir=tmp_path_factory.mktemp("security-cluster-h11"),
        replicas=1,
        env={"FORWARDER_ALWAYS_FORWARD": "/live", "UVICORN_HTTP": "h11"},
    ) as cluster:
        yield cluster


@pytest.fixture(params=["httptools", "h11"])
def stack(request: pytest.FixtureRequest) -> str:
    """The HTTP parser of the cluster `on_stack` gives (the default, httptools, and h11)."""
    return str(request.param)


@pytest.fixture
def on_stack(request: pytest.FixtureRequest, stack: str) -> Cluster:
    """`real_cluster` (httptools) or `h11_cluster`, as `stack` says."""
    cluster: Cluster = request.getfixturevalue("real_cluster" if stack == "httptools" else "h11_cluster")
    return cluster
