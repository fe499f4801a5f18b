"""The Litestream engine against the real `litestream` binary: replicate, a `restore -f` follower, the socket."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from pathlib import Path

import anyio
import pytest

from forwarder.dev.replication import Follower, Replicator
from forwarder.engines.base import Role
from forwarder.engines.litestream import LitestreamEngine, litestream_binary, replicate_config
from forwarder.engines.litestream_config import FILE_INTERVALS, litestream_environ
from forwarder.exceptions import EngineError, EngineUnavailable
from forwarder.tracker import Tracker
from forwarder.txid import Txid
from tests.e2e.conftest import items_replicator

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


@pytest.fixture
async def replicator(tmp_path: Path) -> AsyncIterator[Replicator]:
    """`litestream replicate` of a WAL database with an `items` table, already synced to the replica dir."""
    # L0 kept: `assert_each_txid_holds_its_rows` restores the store to each exact txid a caller got.
    async with items_replicator(tmp_path, intervals=dataclasses.replace(FILE_INTERVALS, l0_retention=3600.0)) as r:
        yield r


@pytest.fixture
async def follower(tmp_path: Path, replicator: Replicator) -> AsyncIterator[Follower]:
    """A `restore -f` follower of the replicator's replica directory."""
    follower = Follower(
        "replica",
        tmp_path / "replica-node" / "app.db",
        replicator.store,
        log_path=tmp_path / "logs" / "follower.log",
    )
    try:
        with anyio.fail_after(20):
            await follower.start()
        yield follower
    finally:
        await follower.stop()


def count_rows(database: Path, n: int) -> int:
    # A fresh read-only connection per read: a long-lived one serves stale pages (reference pitfall 1).
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as db:
        row = db.execute("SELECT count(*) FROM items WHERE n = ?", (n,)).fetchone()
        return int(row[0])


async def assert_each_txid_holds_its_rows(replicator: Replicator, got: dict[int, Txid], directory: Path) -> None:
    """Restore the store exactly up to each txid a caller got (`got`: row -> txid): that caller's row is there."""
    directory.mkdir()
    for txid in sorted(set(got.values())):
        restored = directory / f"{txid}.db"
        process = await asyncio.create_subprocess_exec(
            litestream_binary(),
            "restore",
            "-txid",
            str(txid),
            "-o",
            str(restored),
            replicator.store.url(),
            env=litestream_environ(replicator.store),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        assert process.returncode == 0, output.decode()
        for n, txid_of_n in got.items():
            if txid_of_n == txid:
                assert count_rows(restored, n) == 1, f"row {n} is not in txid {txid}, which its caller got"


async def test_commit_position_is_reached_by_the_follower_and_the_row_is_visible(
    replicator: Replicator, follower: Follower
) -> None:
    primary = LitestreamEngine(replicator.database, Role.PRIMARY, socket_path=replicator.socket_path)
    replica = LitestreamEngine(follower.database, Role.REPLICA)
    tracker = Tracker()
    replica.on_position(tracker.advance)
    with anyio.fail_after(30):
        async with primary, replica:
            assert primary.position > 0  # start() read GET /txid
            assert replica.position > 0  # start() read the -txid file
            with closing(sqlite3.connect(replicator.database)) as db:
                for n in range(50):
                    db.execute("INSERT INTO items (n) VALUES (?)", (n,))
                    db.commit()
                    txid = await primary.commit_position()
                    assert primary.position >= txid
                    await tracker.wait_for(txid, timeout=5)
                    assert replica.position >= txid
                    assert count_rows(follower.database, n) == 1


class CountingEngine(LitestreamEngine):
    syncs = 0

    async def _sync_once(self) -> Txid:
        self.syncs += 1
        return await super()._sync_once()


async def concurrent_writes(
    replicator: Replicator, writers: int, position: Callable[[], Awaitable[Txid]], spread: Callable[[int], float]
) -> dict[int, Txid]:
    """`writers` tasks on one connection, each after a random delay of up to `spread(n)` s: insert row n,
    commit, then ask `position()`; the txid each one got."""
    got: dict[int, Txid] = {}

    async def write(db: sqlite3.Connection, n: int) -> None:
        if spread(n):
            await anyio.sleep(random.uniform(0, spread(n)))
        db.execute("INSERT INTO items (n) VALUES (?)", (n,))
        db.commit()
        got[n] = await position()

    with closing(sqlite3.connect(replicator.database)) as db:
        async with anyio.create_task_group() as tg:
            for n in range(writers):
                tg.start_soon(write, db, n)
    return got


async def test_concurrent_commit_positions_cover_each_callers_own_write(tmp_path: Path, replicator: Replicator) -> None:
    engine = CountingEngine(replicator.database, Role.PRIMARY, socket_path=replicator.socket_path)
    with anyio.fail_after(60):
        async with engine:
            # A third arrive at once, the rest spread out while syncs are in flight (the exact answer
            # waits for the first file that holds the commit: the next sync's, or the one after).
            got = await concurrent_writes(replicator, 60, engine.commit_position, lambda n: 0.1 if n % 3 else 0.0)
            assert engine.keeper.bumps == 0  # none is a promise: each is a file that exists
            newest = max(got.values())
            while await replicator.txid() < newest:
                await anyio.sleep(0.01)
            while await replicator.txid() < newest:
                await anyio.sleep(0.01)
        assert len(got) == 60
        assert engine.syncs < 60  # callers shared syncs when the files could not tell
        # Strict check: restoring the replica exactly up to the txid a caller got holds that caller's row.
        await assert_each_txid_holds_its_rows(replicator, got, tmp_path / "at")


async def test_concurrent_prompt_positions_cover_each_callers_own_write_and_come_to_exist(
    tmp_path: Path, replicator: Replicator
) -> None:
    # The prompt answer (`newest + 2` from local files, as under load): no sync-status, no wait.
    engine = LitestreamEngine(replicator.database, Role.PRIMARY, socket_path=replicator.socket_path)
    engine.quiet_gap = float("inf")
    with anyio.fail_after(60):
        async with engine:
            # Commits land anywhere relative to the 10 ms monitor.
            got = await concurrent_writes(replicator, 60, engine.promise_position, lambda n: 0.1)
            while engine.keeper.running:  # the last promises, kept with no write after them
                await anyio.sleep(0.01)
            newest = max(got.values())
            while await replicator.txid() < newest:
                await anyio.sleep(0.01)
        assert len(got) == 60
        # Strict check: restoring exactly up to the txid a caller got holds that caller's row, and the txid exists.
        # (With `newest + 1` instead, a commit the running sync had not read misses here in most runs.)
        await assert_each_txid_holds_its_rows(replicator, got, tmp_path / "prompt")


async def test_writes_20_ms_apart_get_the_next_txid_and_almost_no_keeper_write(
    tmp_path: Path, replicator: Replicator
) -> None:
    # A primary writing every 20 ms (an app with a few dozen writes a second): past the keeper's
    # QUIET, a promise would be kept by a write of the keeper's own after each one, doubling the
    # LTX files (and a bucket's PUTs). Past QUIET_GAP the engine asks sync-status instead.
    engine = LitestreamEngine(replicator.database, Role.PRIMARY, socket_path=replicator.socket_path)
    got: dict[int, Txid] = {}
    with anyio.fail_after(60):
        async with engine:
            with closing(sqlite3.connect(replicator.database)) as db:
                for n in range(40):
                    db.execute("INSERT INTO items (n) VALUES (?)", (n,))
                    db.commit()
                    got[n] = await engine.promise_position()
                    await anyio.sleep(0.02)
            while engine.keeper.running:
                await anyio.sleep(0.01)
            newest = max(got.values())
            while await replicator.txid() < newest:
                await anyio.sleep(0.01)
    # A sync already running when a write lands still takes the promise (and sometimes the keeper).
    assert engine.keeper.bumps <= 20, f"{engine.keeper.bumps} keeper writes for 40 writes"  # 38 with a 50 ms gap
    covering = engine.covering
    assert covering is not None
    assert covering.outcomes["next txid"] >= 15, covering.outcomes
    await assert_each_txid_holds_its_rows(replicator, got, tmp_path / "spaced")


async def test_a_caller_never_joins_a_sync_that_started_before_it(tmp_path: Path) -> None:
    """Against a fake control socket that answers each /sync with the number of commits made before it arrived."""
    commits = 0
    syncs = 0
    release = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal syncs
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = 0
                for line in head.decode().split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                await reader.readexactly(length)
                seen = commits
                if head.startswith(b"POST /sync "):
                    syncs += 1
                    if syncs == 1:
                        await release.wait()  # hold the first sync in flight
                else:
                    seen = 0  # GET /txid at start()
                body = f'{{"status":"synced","txid":{seen},"replicated_txid":{seen}}}'.encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    socket_path = tmp_path / "fake.sock"
    server = await asyncio.start_unix_server(handle, path=str(socket_path))
    engine = LitestreamEngine(tmp_path / "app.db", Role.PRIMARY, socket_path=socket_path)
    with anyio.fail_after(10):
        async with server, engine:
            commits += 1
            first = asyncio.create_task(engine.commit_position())
            while syncs < 1:  # the first sync has reached the server
                await asyncio.sleep(0.001)
            commits += 1  # committed while the first sync is in flight
            later = [asyncio.create_task(engine.commit_position()) for _ in range(5)]
            await asyncio.sleep(0.05)
            assert syncs == 1  # the queued sync waits for the in-flight one
            release.set()
            assert await first == 1
            assert [await task for task in later] == [2] * 5
            assert syncs == 2  # the five later callers shared one sync


async def test_missing_socket_raises_engine_unavailable_naming_the_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "missing.sock"
    engine = LitestreamEngine(tmp_path / "app.db", Role.PRIMARY, socket_path=socket_path)
    with anyio.fail_after(10):
        async with engine:  # start() does not fail when Litestream is not up yet
            assert engine.position == 0
            with pytest.raises(EngineUnavailable) as info:
                await engine.commit_position()
            assert str(socket_path) in str(info.value)
            assert "socket: enabled: true" in str(info.value)
            # A socket file nobody listens on (a killed replicate): connection refused, same error.
            import socket

            with socket.socket(socket.AF_UNIX) as stale:
                stale.bind(str(socket_path))
            with pytest.raises(EngineUnavailable, match="is `litestream replicate` running"):
                await engine.commit_position()


async def test_commit_position_on_a_replica_is_an_error(tmp_path: Path) -> None:
    engine = LitestreamEngine(tmp_path / "app.db", Role.REPLICA, primary_id="node-1")
    assert engine.primary.role is Role.REPLICA and engine.primary.primary_id == "node-1"
    with pytest.raises(EngineError, match="only available on the primary"):
        await engine.commit_position()


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


@pytest.mark.parametrize("watcher", ["inotify", "polling"])
async def test_garbage_in_the_txid_file_does_not_kill_the_watcher(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, watcher: str
) -> None:
    if watcher == "polling":
        monkeypatch.setitem(sys.modules, "asyncinotify", None)  # import fails: the engine polls
    database = tmp_path / "app.db"
    txid_file = tmp_path / "app.db-txid"
    engine = LitestreamEngine(database, Role.REPLICA)
    tracker = Tracker()
    seen: list[Txid] = []
    engine.on_position(tracker.advance)
    engine.on_position(seen.append)
    caplog.set_level(logging.WARNING, logger="forwarder.engines.litestream")
    with anyio.fail_after(30):
        async with engine:
            assert engine.position == 0  # no -txid file yet: not restored, not an error
            write_atomically(txid_file, "not a txid\n")
            await anyio.sleep(0.1)
            write_atomically(txid_file, "0000000000000005\n")
            await tracker.wait_for(Txid(5), timeout=5)
            write_atomically(txid_file, "garbage!\n")
            await anyio.sleep(0.1)
            txid_file.write_text("garbage!\n")  # the same content again, written in place
            await anyio.sleep(0.1)
            assert engine.position == 5  # garbage keeps the previous position
            write_atomically(txid_file, "0000000000000009\n")
            await tracker.wait_for(Txid(9), timeout=5)
            # A follower wiped and restored again starts lower: reported to listeners, too.
            write_atomically(txid_file, "0000000000000007\n")
            with anyio.fail_after(5):
                while engine.position != 7:
                    await anyio.sleep(0.005)
            assert seen[-1] == 7 and tracker.position == 9
            watcher_task = engine._watch._task
            assert watcher_task is not None and not watcher_task.done()
        assert watcher_task.done()  # aclose() stopped it
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("not a txid" in w for w in warnings) == 1
    assert sum("garbage!" in w for w in warnings) == 1  # once per distinct content
    assert Txid(5) in seen and Txid(9) in seen


async def test_position_before_the_first_restore_is_zero_and_start_reads_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "app.db-txid").write_text("00000000000000ff\n")
    engine = LitestreamEngine(tmp_path / "app.db", Role.REPLICA)
    with anyio.fail_after(10):
        async with engine:
            assert engine.position == 0xFF


def test_replicate_config_quotes_paths() -> None:
    config = replicate_config(Path("/data/my db.sqlite"), Path("/data/replica"), Path("/data/ls.sock"))
    assert 'path: "/data/my db.sqlite"' in config
    assert "socket:\n  enabled: true\n" in config
    assert "monitor-interval: 10ms" in config and "sync-interval: 10ms" in config
    assert Path(litestream_binary()).name == "litestream"
