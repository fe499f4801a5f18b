"""The off-Fly topology with its object store gone for 10 s: a 3-node cluster whose Litestream
replicates to an S3-compatible server (moto on loopback, `forwarder dev --store s3`), traffic
running, and the server frozen (SIGSTOP: its port stays open, its state is kept, and every
request to it hangs) for `STORE_DOWN` seconds, then resumed.

While it is frozen the primary keeps committing (Litestream keeps its LTX files locally until it
can upload them), but no replica can get anything new: a forwarded write or an RPC call answers
after the replication wait with `Forwarder-Stale: 1`, and a read whose cookie is ahead of the
replica is served by the primary (`on_lag=forward`). Pass criteria as in `test_faults`: every
answer a 200, nothing lost or doubled, read-your-writes for every write, and every replica equal
to the primary once the store is back.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from forwarder.dev import Cluster
from forwarder.dev.s3server import LocalS3Server
from tests.chaos.harness import Tally, finish, latencies, replica_metrics, traffic
from tests.e2e.conftest import running_cluster

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
STORE_DOWN = 10.0
"""Seconds the object store is unreachable (the issue's figure)."""
AFTER = 6.0
"""Seconds of traffic after the store is back."""


@pytest.fixture
async def s3_cluster(tmp_path: Path, s3_server: LocalS3Server) -> AsyncIterator[Cluster]:
    store = await s3_server.store("forwarder-chaos", "chaos/app.db")
    async with running_cluster(
        app="tests.chaos.app:app", data_dir=tmp_path / "c", replicas=2, app_dir=ROOT, store=store
    ) as cluster:
        yield cluster


async def test_the_object_store_unreachable_for_10_s(s3_cluster: Cluster, s3_server: LocalS3Server) -> None:
    cluster, tally, done = s3_cluster, Tally(), asyncio.Event()
    with anyio.fail_after(150):
        load = asyncio.create_task(traffic(cluster, tally, total=100_000, concurrency=8, deadline=120, stop=done))
        while len(tally.acknowledged) < 20:  # traffic under way, writes going through the store
            await asyncio.sleep(0.05)
        s3_server.process.signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            await asyncio.sleep(STORE_DOWN)
        finally:
            s3_server.process.signal(signal.SIGCONT)
        resumed_at = time.monotonic()
        await asyncio.sleep(AFTER)
        done.set()
        await load
        ended_at = time.monotonic()
        phases = {
            "before": tally.answered_between(0, stopped_at),
            "store down": tally.answered_between(stopped_at, resumed_at),
            "after": tally.answered_between(resumed_at, ended_at),
        }
        await finish(
            f"object store unreachable {STORE_DOWN:g}s",
            cluster,
            tally,
            answers={name: latencies(seconds) for name, seconds in phases.items()},
            s3_requests=dict(s3_server.request_counts("forwarder-chaos")),
        )
        metrics = await replica_metrics(cluster)
    assert phases["store down"]  # traffic kept being answered while the store was down
    # Reads whose cookie was ahead of the frozen replicas were served by the primary, not failed.
    assert metrics["forwarded (lag)"] > 0, metrics
