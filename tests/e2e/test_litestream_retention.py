"""The LTX retention forwarder configures, against the real `litestream` binary: the store stays small
(a follower's poll lists it whole) and followers, running or new, still get every row."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import anyio
import pytest

from forwarder.dev.replication import Follower, Replicator
from forwarder.engines.litestream_config import Intervals
from forwarder.replica.command import warn_if_crowded
from forwarder.replica.store_files import files_by_level, ltx_files
from forwarder.txid import Txid
from tests.e2e.conftest import items_replicator

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

# Short enough that a test sees several snapshots and compactions; the shape of FILE_INTERVALS.
FAST = Intervals(l0_retention=0.2, compaction=0.2, snapshot=2.0)


def ltx_files_at(store: Path, level: int) -> list[tuple[Txid, Txid]]:
    """(min, max) txid of every LTX file at `level` of a file store."""
    found = []
    for path in (store / "ltx" / str(level)).glob("*.ltx"):
        low, high = path.stem.split("-")
        found.append((Txid.parse(low), Txid.parse(high)))
    return sorted(found)


def rows(database: Path) -> int:
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as db:
        return int(db.execute("SELECT count(*) FROM items").fetchone()[0])


@pytest.fixture
async def replicator(tmp_path: Path) -> AsyncIterator[Replicator]:
    async with items_replicator(tmp_path, intervals=FAST) as replicator:
        yield replicator


def follower(tmp_path: Path, name: str, replicator: Replicator) -> Follower:
    return Follower(
        name, tmp_path / name / "app.db", replicator.store, log_path=tmp_path / "logs" / f"{name}.log", intervals=FAST
    )


async def test_old_l0_and_l1_files_leave_the_store_and_followers_still_get_every_row(
    tmp_path: Path, replicator: Replicator
) -> None:
    store = tmp_path / "replica"
    early = follower(tmp_path, "early", replicator)
    late = follower(tmp_path, "late", replicator)
    try:
        with anyio.fail_after(60):
            await early.start()
            written, marked = 0, None
            started = time.monotonic()
            with closing(sqlite3.connect(replicator.database)) as db:
                # A row every 20 ms for 8 s: four snapshot intervals, 40 compactions.
                while time.monotonic() - started < 8:
                    db.execute("INSERT INTO items (n) VALUES (?)", (written,))
                    db.commit()
                    written += 1
                    if marked is None and time.monotonic() - started > 2:
                        marked = await replicator.txid()
                    await anyio.sleep(0.02)
            assert marked is not None
            final = await replicator.engine.commit_position()
            # Everything up to `marked` is 6 s old: three snapshots have been taken since.
            level1 = ltx_files_at(store, 1)
            assert level1, "no L1 file: compaction did not run"
            assert all(high > marked for _, high in level1), f"L1 still holds txids up to {marked}: {level1[:3]}"
            assert len(level1) <= 3 * FAST.snapshot / FAST.compaction, len(level1)
            assert all(high > marked for _, high in ltx_files_at(store, 0))
            while (early.position() or Txid(0)) < final:
                await anyio.sleep(0.01)
            assert rows(early.database) == written
            # A follower that starts now restores from a snapshot and the L1 files after it.
            await late.start()
            while (late.position() or Txid(0)) < final:
                await anyio.sleep(0.01)
            assert rows(late.database) == written
    finally:
        await early.stop()
        await late.stop()


# L0 gone in 0.2 s, L1 kept 10 s: a follower frozen in between finds its next txids in L1 only. (Frozen past
# the snapshot retention, L1 is gone too and only a new restore helps: the supervisor's stall check does it.)
BRIDGEABLE = Intervals(l0_retention=0.2, compaction=0.2, snapshot=10.0)


async def test_a_follower_frozen_past_the_l0_retention_bridges_the_gap_from_l1(tmp_path: Path) -> None:
    async with items_replicator(tmp_path, intervals=BRIDGEABLE) as replicator:
        await frozen_follower_catches_up(tmp_path, replicator)


async def frozen_follower_catches_up(tmp_path: Path, replicator: Replicator) -> None:
    frozen = follower(tmp_path, "frozen", replicator)
    try:
        with anyio.fail_after(60):
            await frozen.start()
            assert frozen.process is not None and frozen.process.pid is not None
            pid = frozen.process.pid
            written = 0
            with closing(sqlite3.connect(replicator.database)) as db:

                async def write_for(seconds: float) -> None:
                    nonlocal written
                    deadline = time.monotonic() + seconds
                    while time.monotonic() < deadline:
                        db.execute("INSERT INTO items (n) VALUES (?)", (written,))
                        db.commit()
                        written += 1
                        await anyio.sleep(0.02)

                await write_for(1)
                os.kill(pid, signal.SIGSTOP)  # a fault, not the supervisor's pause: nobody knows
                try:
                    at = frozen.position() or Txid(0)
                    await write_for(2)
                    final = await replicator.engine.commit_position()
                    # The L0 files right after the frozen follower's position are gone: only L1 has them.
                    assert all(low > at + 1 for low, _ in ltx_files_at(tmp_path / "replica", 0))
                    assert any(low <= at + 1 <= high for low, high in ltx_files_at(tmp_path / "replica", 1))
                finally:
                    os.kill(pid, signal.SIGCONT)
            while (frozen.position() or Txid(0)) < final:
                await anyio.sleep(0.01)
            assert rows(frozen.database) == written
            assert frozen.process.pid == pid  # caught up by itself, no restore
    finally:
        await frozen.stop()


async def test_a_replica_warns_when_the_store_holds_more_l1_files_than_idle_polls_can_afford(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Litestream's own 24 h snapshot, and L1 compacted every 50 ms so it grows in seconds.
    growing = Intervals(l0_retention=0.2, compaction=0.05, snapshot=86400.0)
    async with items_replicator(tmp_path, intervals=growing) as replicator:
        with anyio.fail_after(30), closing(sqlite3.connect(replicator.database)) as db:
            for n in range(150):
                db.execute("INSERT INTO items (n) VALUES (?)", (n,))
                db.commit()
                await anyio.sleep(0.01)
            await replicator.engine.commit_position()
            # Compaction runs every 50 ms: compare the two listings once the last L0 is in L1.
            settled = -1
            while (now := len(ltx_files_at(tmp_path / "replica", 1))) != settled:
                settled = now
                await anyio.sleep(0.3)
            counts = files_by_level(await ltx_files(replicator.store))
            assert counts[1] == len(ltx_files_at(tmp_path / "replica", 1)) > 10
            with caplog.at_level(logging.WARNING, logger="forwarder.replica"):
                await warn_if_crowded(replicator.store, limit=10)
                quiet = [r for r in caplog.records if "L1" in r.getMessage()]
                await warn_if_crowded(replicator.store)  # the default limit: far from it
    assert len(quiet) == 1 and "retention: 1h" in quiet[0].getMessage()
    assert len([r for r in caplog.records if "L1" in r.getMessage()]) == 1
