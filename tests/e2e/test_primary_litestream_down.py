"""The primary's own `litestream replicate` killed or frozen: writes still commit and are answered,
marked stale, within a bound; once Litestream runs again, forwarded writes get their txid back."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from forwarder.dev import Cluster
from forwarder.engines.control_socket import SYNC_TIMEOUT
from forwarder.engines.litestream_position import LTX_WAIT
from forwarder.middleware.headers import STALE, TXID

from .conftest import running_cluster

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

APP = "tests.e2e.apps.middleware_app:app"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(app=APP, data_dir=tmp_path, replicas=1, edge=False) as started:
        yield started


async def forwarded_write(client: httpx.AsyncClient, cluster: Cluster, value: str) -> tuple[httpx.Response, float]:
    """POST one item through the replica; the response and the seconds it took."""
    started = time.monotonic()
    response = await client.post(f"{cluster.replicas[0].url}/items", json={"value": value})
    return response, time.monotonic() - started


async def on_primary(client: httpx.AsyncClient, cluster: Cluster) -> list[str]:
    items = (await client.get(f"{cluster.primary.url}/items")).json()["items"]
    return [item["value"] for item in items]


def litestream_pid(cluster: Cluster) -> int:
    pid = cluster.replicator.process.pid
    assert pid is not None
    return pid


async def test_a_killed_primary_litestream_leaves_forwarded_writes_answered_and_marked_stale(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        with anyio.fail_after(60):
            response, _ = await forwarded_write(client, cluster, "before")
            assert response.status_code == 201 and TXID.decode() in response.headers

            os.kill(litestream_pid(cluster), signal.SIGKILL)
            for n in range(3):
                response, took = await forwarded_write(client, cluster, f"down {n}")
                # Committed on the primary; no file will ever hold it, so there is no txid to wait for.
                assert response.status_code == 201, response.text
                assert response.headers.get(STALE.decode()) == "1"
                assert TXID.decode() not in response.headers
                assert took < LTX_WAIT + 2, f"{took:.2f}s"  # the wait for a file, then POST /sync refused at once
            assert {"before", "down 0", "down 1", "down 2"} <= set(await on_primary(client, cluster))

            await cluster.replicator.start()
            response, _ = await forwarded_write(client, cluster, "after")
            assert response.status_code == 201 and TXID.decode() in response.headers
            assert STALE.decode() not in response.headers
            read = await client.get(f"{cluster.replicas[0].url}/items")  # with the write's cookie: it waits
            # Litestream syncs the WAL it missed: the writes made while it was down reach the replica too.
            assert {"down 0", "down 1", "down 2", "after"} <= {item["value"] for item in read.json()["items"]}


async def test_a_frozen_primary_litestream_answers_forwarded_writes_after_its_control_socket_times_out(
    cluster: Cluster,
) -> None:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        with anyio.fail_after(60):
            await forwarded_write(client, cluster, "before")
            pid = litestream_pid(cluster)
            os.kill(pid, signal.SIGSTOP)
            try:
                response, took = await forwarded_write(client, cluster, "frozen")
            finally:
                os.kill(pid, signal.SIGCONT)
            assert response.status_code == 201, response.text
            assert response.headers.get(STALE.decode()) == "1"
            # The wait for a file, then POST /sync times out: one socket timeout, not one per request tried.
            assert took < LTX_WAIT + SYNC_TIMEOUT + 2, f"{took:.2f}s"
            assert "frozen" in await on_primary(client, cluster)
            response, _ = await forwarded_write(client, cluster, "thawed")
            assert response.status_code == 201 and TXID.decode() in response.headers
