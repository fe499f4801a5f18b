"""Pooled replica connections (`forwarder.sqlalchemy`) against a real `litestream restore -f`: the follower
keeps applying under a steady read load and after it, and reads through the pool see every write."""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import threading
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import anyio
import pytest
from sqlalchemy import event, text

from forwarder import Forwarder, MemoryEngine, MemoryLog, Role, Topology, Txid
from forwarder.dev.replication import Follower, Replicator
from forwarder.sqlalchemy import create_engine
from tests.e2e.conftest import items_replicator

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[tuple[Replicator, Follower]]:
    follower = Follower("r", tmp_path / "r" / "app.db", tmp_path / "store", log_path=tmp_path / "follow.log")
    async with items_replicator(tmp_path, "store") as replicator:
        try:
            with anyio.fail_after(30):
                target = await replicator.engine.commit_position()
                await follower.start()
                while (follower.position() or 0) < target:
                    await asyncio.sleep(0.01)
            yield replicator, follower
        finally:
            await follower.stop()


def replica_forwarder() -> Forwarder:
    engine = MemoryEngine(MemoryLog(), Role.REPLICA, primary_id="p")
    topology = Topology("r", "ams", Role.REPLICA, primary_url="http://127.0.0.1:9", primary_id="p")
    return Forwarder(engine=engine, topology=topology, secret="s")


async def reached(follower: Follower, target: int, seconds: float) -> float | None:
    """Seconds until the follower's position reaches `target`, or None if it does not within `seconds`."""
    started = time.monotonic()
    while (follower.position() or 0) < target:
        if time.monotonic() - started > seconds:
            return None
        await asyncio.sleep(0.002)
    return time.monotonic() - started


async def test_the_follower_applies_under_pooled_reads_and_every_read_back_sees_its_write(
    nodes: tuple[Replicator, Follower],
) -> None:
    replicator, follower = nodes
    forwarder = replica_forwarder()
    engine = create_engine(f"sqlite:///{follower.database}", forwarder=forwarder)
    connects = [0]
    event.listen(engine, "connect", lambda *_: connects.__setitem__(0, connects[0] + 1))
    stop, errors, reads = threading.Event(), list[BaseException](), [0]

    def read() -> None:
        while not stop.is_set():
            forwarder.tracker.advance(Txid(follower.position() or 0))
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT count(*) FROM items")).scalar_one()
                reads[0] += 1
            except BaseException as error:  # a read that failed: reported by the assertion below
                errors.append(error)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    lags: list[float] = []
    try:
        with anyio.fail_after(120):
            for n in range(30):
                with closing(sqlite3.connect(replicator.database)) as db:
                    db.execute("INSERT INTO items VALUES (?)", (n,))
                    db.commit()
                target = int(await replicator.engine.commit_position())
                lag = await reached(follower, target, 5.0)
                assert lag is not None, f"write {n}: the follower stalled at {follower.position()} < {target}"
                lags.append(lag)
                forwarder.tracker.advance(Txid(target))
                with engine.connect() as conn:  # the read-back goes through the same pool
                    assert conn.execute(text("SELECT count(*) FROM items WHERE n = :n"), {"n": n}).scalar_one() == 1
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    print(
        f"\nfollower lag under 4 reading threads: p50 {statistics.median(lags) * 1000:.1f} ms, max "
        f"{max(lags) * 1000:.1f} ms; {reads[0]} reads, {connects[0]} connections opened"
    )
    assert errors == []
    assert connects[0] < reads[0]  # the pool was used
    with anyio.fail_after(30):
        # The readers are gone, their connections idle in the pool: the next write still gets through.
        with closing(sqlite3.connect(replicator.database)) as db:
            db.execute("INSERT INTO items VALUES (-1)")
            db.commit()
        assert await reached(follower, int(await replicator.engine.commit_position()), 2.0) is not None
    engine.dispose()
