"""`ReplicaSupervisor` and `forwarder replica` on real Litestream: a stalled follower is restored into a new
generation and swapped in, and readers opening the node's path in a tight loop never see an error."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import anyio
import pytest

from forwarder.dev.replication import Replicator
from forwarder.engines.base import Role
from forwarder.engines.litestream import LitestreamEngine
from forwarder.replica import ReplicaSupervisor, StorePosition
from forwarder.replica.txid_file import read_txid_file
from tests.e2e.conftest import items_replicator

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


@pytest.fixture
async def replicator(tmp_path: Path) -> AsyncIterator[Replicator]:
    async with items_replicator(tmp_path, "store") as replicator:
        yield replicator


async def insert(replicator: Replicator, n: int) -> int:
    with closing(sqlite3.connect(replicator.database)) as db:
        db.execute("INSERT INTO items VALUES (?)", (n,))
        db.commit()
    return int(await replicator.engine.commit_position())


class Readers:
    """Threads that open the node's path (`mode=ro`, fresh each time) and count rows, recording errors."""

    def __init__(self, database: Path, threads: int = 2) -> None:
        self.database, self.reads = database, 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with closing(sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5)) as db:
                    db.execute("SELECT count(*) FROM items").fetchone()
                self.reads += 1
            except sqlite3.Error as exc:
                self.errors.append(str(exc))

    def __enter__(self) -> Readers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


async def test_a_stalled_follower_is_restored_into_a_new_generation_with_no_reader_error(
    tmp_path: Path, replicator: Replicator
) -> None:
    database = tmp_path / "node" / "app.db"
    supervisor = ReplicaSupervisor(
        "node",
        database,
        replicator.store,
        log_path=tmp_path / "logs" / "follower.log",
        primary=replicator.txid,
        stall_limit=1.0,
    )
    engine = LitestreamEngine(database, Role.REPLICA)
    seen: list[int] = []
    engine.on_position(lambda txid: seen.append(int(txid)))
    try:
        with anyio.fail_after(60):
            await supervisor.start()
            assert database.is_symlink() and supervisor.generations.current() is not None
            first = supervisor.generations.current()
            await engine.start()
            assert engine.restored
            watching = asyncio.create_task(supervisor.run())
            with Readers(database) as readers:
                await insert(replicator, 1)
                assert supervisor.process is not None and supervisor.process.pid is not None
                # A real stall: the follower frozen by SIGSTOP, outside the supervisor's own pause().
                os.kill(supervisor.process.pid, signal.SIGSTOP)
                txid = await insert(replicator, 2)
                stalled = time.monotonic()
                while supervisor.restores == 0:
                    await anyio.sleep(0.05)
                healed = time.monotonic() - stalled
                while int(engine.position) < txid:  # the engine followed the swap
                    await anyio.sleep(0.01)
                for n in range(3, 23):
                    txid = await insert(replicator, n)
                while (read_txid_file(supervisor.txid_path) or 0) < txid:
                    await anyio.sleep(0.01)
                await anyio.sleep(1.5)  # past the grace period: the old generation goes
                watching.cancel()
                await asyncio.gather(watching, return_exceptions=True)
            assert readers.errors == [], readers.errors[:5]
            assert readers.reads > 100
            assert supervisor.generations.current() != first
            assert supervisor.generations.all() == [supervisor.generations.current().parent]  # type: ignore[union-attr]
            assert "no progress" in supervisor.reasons[0]
            assert seen == sorted(seen), "the position went back across the swap"
            with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
                assert db.execute("SELECT count(*) FROM items").fetchone()[0] == 22
            assert healed < 1.0 + 5.0
            print(f"\nstalled follower restored again {healed:.2f}s after the stall, {readers.reads} reads, 0 errors")
    finally:
        await engine.aclose()
        await supervisor.stop()


async def test_a_follower_merely_behind_is_not_restored(tmp_path: Path, replicator: Replicator) -> None:
    supervisor = ReplicaSupervisor(
        "node", tmp_path / "node" / "app.db", replicator.store, log_path=tmp_path / "f.log", stall_limit=0.5
    )
    try:
        await supervisor.start()
        primary = await replicator.txid()
        # Behind, but advancing at every look: catching up, not stalling.
        for step in range(8):
            supervisor._last_position = None  # as if it had moved since the last look
            assert supervisor.problem(primary.__class__(int(primary) + 1 + step)) is None
            await anyio.sleep(0.1)
        await anyio.sleep(0.6)
        found = supervisor.problem(primary.__class__(int(primary) + 100))
        assert found is not None and found[1] and "no progress" in found[0]
    finally:
        await supervisor.stop()


async def test_forwarder_replica_command_restores_and_follows(tmp_path: Path, replicator: Replicator) -> None:
    database = tmp_path / "host" / "app.db"
    assert int(await StorePosition(replicator.store)()) >= 1  # the store source reads `litestream ltx`
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "forwarder.cli",
        "replica",
        "--database",
        str(database),
        replicator.store.url(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "AWS_EC2_METADATA_DISABLED": "true"},
    )
    try:
        with anyio.fail_after(30):
            txid = await insert(replicator, 7)
            while (read_txid_file(database.with_name("app.db-txid")) or 0) < txid:
                await anyio.sleep(0.05)
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            assert db.execute("SELECT n FROM items").fetchall() == [(7,)]
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(15):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_copy_restored_again_is_not_swapped_in_behind_the_old_one(
    tmp_path: Path, replicator: Replicator
) -> None:
    """The old follower keeps advancing while the new copy restores (a store that was down is back):
    the swap waits until the new copy holds what the old one reached, so the position never goes back."""
    database = tmp_path / "node" / "app.db"
    supervisor = ReplicaSupervisor(
        "node", database, replicator.store, log_path=tmp_path / "logs" / "follower.log", min_gap=0.0
    )
    engine = LitestreamEngine(database, Role.REPLICA)
    seen: list[int] = []
    engine.on_position(lambda txid: seen.append(int(txid)))
    writing = True

    async def write() -> None:
        n = 0
        while writing:
            n += 1
            await insert(replicator, n)

    try:
        with anyio.fail_after(60):
            await supervisor.start()
            await engine.start()
            writer = asyncio.create_task(write())
            for _ in range(3):
                await anyio.sleep(0.2)
                assert await supervisor.restore_again("test: the old follower keeps advancing")
            writing = False
            await writer
        assert supervisor.restores == 3
        assert seen == sorted(seen), "the position went back across a swap"
    finally:
        await engine.aclose()
        await supervisor.stop()
