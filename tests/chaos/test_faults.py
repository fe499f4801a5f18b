"""Fault and load scenarios on a real 3-node cluster (Litestream, uvicorn, the edge), loopback only.

Each is bounded in requests and time. CI runs them at `CHAOS_REQUESTS` (default 2,000 for the load
scenario); `scripts/chaos` runs the full 20,000. The traffic mixes reads, forwarded writes and
`@primary_only` calls from replicas (`tests/chaos/harness.py`). Pass criteria: 0 errors apart from
503 with Retry-After while the primary is down (and the answers to requests in flight at a kill,
whose outcome is unknown: counted apart, applied at most once); 0 acknowledged writes lost, no
write applied twice; no 503 applied; read-your-writes for every acknowledged write; every replica
equal to the primary at the end. The object store's outage is in `test_store_outage.py`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from forwarder.dev import Cluster
from tests.chaos.harness import Fault, Tally, finish, holds_lock, traffic
from tests.e2e.conftest import running_cluster

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
LOAD_REQUESTS = int(os.environ.get("CHAOS_REQUESTS", "2000"))
LOAD_BUDGET = 60 + LOAD_REQUESTS * 0.05
"""Seconds the load scenario may take (20,000 requests: about 17 min at most; it takes a few)."""


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(app="tests.chaos.app:app", data_dir=tmp_path / "c", replicas=2, app_dir=ROOT) as c:
        yield c


@pytest.mark.timeout(LOAD_BUDGET + 90)  # past the suite's 120 s: the cluster's start and stop come on top
async def test_mixed_load_through_replicas_and_the_edge(cluster: Cluster) -> None:
    tally = Tally()
    with anyio.fail_after(LOAD_BUDGET):
        started = time.monotonic()
        await traffic(cluster, tally, total=LOAD_REQUESTS, concurrency=48)
        took = time.monotonic() - started
        await finish(f"{LOAD_REQUESTS} mixed at 48", cluster, tally, took=f"{took:.0f}s ({tally.total / took:.0f}/s)")
    assert tally.total >= LOAD_REQUESTS


async def test_a_follower_frozen_holding_the_lock(cluster: Cluster) -> None:
    """SIGSTOP the follower while it holds SQLite's lock, for longer than the replication timeout."""
    tally = Tally()
    node = cluster.replicas[0]
    assert node.follower is not None and node.follower.process is not None
    pid = node.follower.process.pid
    assert pid is not None
    with anyio.fail_after(300):
        load = asyncio.create_task(traffic(cluster, tally, total=100_000, concurrency=8, deadline=14))
        frozen_at = None
        while frozen_at is None and not load.done():
            if holds_lock(pid):
                os.kill(pid, signal.SIGSTOP)
                if holds_lock(pid):
                    frozen_at = time.monotonic()
                else:
                    os.kill(pid, signal.SIGCONT)
            await asyncio.sleep(0)
        assert frozen_at is not None, "the follower never held a lock under write load"
        await load
        healed = node.follower.restores
        await finish("follower frozen holding the lock", cluster, tally)
    assert healed >= 1  # the stalled follower was restored again, with a swap


async def test_a_follower_stopped_longer_than_the_replication_timeout(cluster: Cluster) -> None:
    tally = Tally()
    node = cluster.replicas[1]
    assert node.follower is not None and node.follower.process is not None and node.follower.process.pid
    with anyio.fail_after(300):
        load = asyncio.create_task(traffic(cluster, tally, total=100_000, concurrency=8, deadline=12))
        await asyncio.sleep(1)
        os.kill(node.follower.process.pid, signal.SIGSTOP)
        await load
        await finish("follower SIGSTOP > replication timeout", cluster, tally)
    assert node.follower.restores >= 1


async def test_kill_9_of_the_primary_app(cluster: Cluster) -> None:
    tally, fault = Tally(), Fault()
    with anyio.fail_after(300):
        load = asyncio.create_task(traffic(cluster, tally, total=100_000, concurrency=8, deadline=12, fault=fault))
        await asyncio.sleep(2)
        assert cluster.primary.pid is not None
        fault.kill(cluster.primary.url, primary=True)
        os.kill(cluster.primary.pid, signal.SIGKILL)
        assert cluster.primary.app is not None and await cluster.primary.app.wait(10) is not None
        fault.died()
        await asyncio.sleep(3)
        await cluster.start_node(cluster.primary.id)
        await asyncio.sleep(1)  # answers in flight while it came back may still be 503
        fault.primary_down = False
        await load
        await finish("kill -9 primary", cluster, tally, fault=fault)
    assert tally.allowed_503 > 0  # the primary really was down under traffic


async def test_kill_9_of_a_replica_and_its_follower(cluster: Cluster) -> None:
    tally = Tally()
    node = cluster.replicas[0]
    alive = [True]

    def targets() -> list[str]:
        return [n.url for n in cluster.replicas if n is not node or alive[0]] + [cluster.primary.url]

    fault = Fault()
    with anyio.fail_after(300):
        load = asyncio.create_task(
            traffic(cluster, tally, total=100_000, concurrency=8, deadline=12, targets=targets, fault=fault)
        )
        await asyncio.sleep(2)
        assert node.pid is not None and node.follower is not None and node.follower.process is not None
        alive[0] = False
        await asyncio.sleep(0.2)  # requests already sent to it finish first
        fault.kill(node.url)
        os.kill(node.pid, signal.SIGKILL)
        os.kill(node.follower.process.pid or 0, signal.SIGKILL)
        assert node.app is not None and await node.app.wait(10) is not None
        fault.died()
        await asyncio.sleep(1)
        await cluster.restart_node(node.id)
        alive[0] = True
        await load
        await finish("kill -9 replica + follower", cluster, tally, fault=fault)
