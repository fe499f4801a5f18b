"""The keeper and the prompt answer, on a real WAL database and L0 LTX files written as Litestream would."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing
from pathlib import Path

import anyio
import pytest

from forwarder.engines import litestream_keeper
from forwarder.engines.base import Role
from forwarder.engines.litestream import LitestreamEngine
from forwarder.engines.litestream_files import latest_l0, wal_end
from forwarder.engines.litestream_keeper import MAX_BUMPS, TxidKeeper
from forwarder.engines.litestream_position import CoveringCheck
from forwarder.exceptions import EngineUnavailable
from forwarder.txid import Txid

from .test_litestream_position import write_ltx

pytestmark = pytest.mark.anyio


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[Path, sqlite3.Connection]]:
    """A WAL database with Litestream's bookkeeping table, and L0 txid 10 holding the WAL so far."""
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER)")  # as `replicate` does
    conn.execute("CREATE TABLE t (v)")
    sync(CoveringCheck(path), to=10)
    yield path, conn
    conn.close()


def sync(check: CoveringCheck, *, to: int | None = None) -> int | None:
    """What one Litestream sync does: the WAL frames no LTX holds become the next txid (none if there are none)."""
    end, head = wal_end(check.database), latest_l0(check.ltx_dir)
    assert end is not None
    start = 32 if head is None else head.end
    if end.end <= start:
        return None
    txid = to if to is not None else (head.txid + 1 if head else 1)
    write_ltx(check.ltx_dir, txid, end.salts, start, end.end - start)
    return txid


@asynccontextmanager
async def litestream(check: CoveringCheck, interval: float = 0.003) -> AsyncIterator[list[int]]:
    """A fake monitor: `sync` every `interval` s; yields the txids it made."""
    made: list[int] = []

    async def monitor() -> None:
        while True:
            if (txid := sync(check)) is not None:
                made.append(txid)
            await asyncio.sleep(interval)

    task = asyncio.create_task(monitor())
    try:
        yield made
    finally:
        task.cancel()
        await asyncio.wait([task])


def newest(check: CoveringCheck) -> int:
    head = latest_l0(check.ltx_dir)
    assert head is not None
    return head.txid


async def kept(keeper: TxidKeeper) -> None:
    while keeper.running:
        await asyncio.sleep(0.001)


async def test_the_keeper_makes_the_promise_exist_when_the_sync_that_took_the_commit_leaves_nothing(
    db: tuple[Path, sqlite3.Connection],
) -> None:
    path, conn = db
    check = CoveringCheck(path)
    conn.execute("INSERT INTO t VALUES (1)")
    answer = check.promise()
    assert answer == (12, True)
    assert sync(check) == 11  # the sync that was running took the commit: nothing left for a 12th
    keeper = TxidKeeper(CoveringCheck(path))
    with anyio.fail_after(5):
        async with litestream(check) as made:
            keeper.promise(answer[0])
            await kept(keeper)
    assert newest(check) == 12 and made == [12]
    assert keeper.bumps == 1
    assert conn.execute("SELECT seq FROM _litestream_seq").fetchall() == [(1,)]  # Litestream's own counter


async def test_the_keeper_writes_nothing_when_the_commit_itself_makes_the_promise(
    db: tuple[Path, sqlite3.Connection],
) -> None:
    path, conn = db
    check = CoveringCheck(path)
    conn.execute("INSERT INTO t VALUES (1)")  # read by a sync running since before our commit
    before = wal_end(path)
    conn.execute("INSERT INTO t VALUES (2)")  # our commit
    answer = check.promise()
    assert answer == (12, True)
    head = latest_l0(check.ltx_dir)
    assert before is not None and head is not None
    write_ltx(check.ltx_dir, 11, before.salts, head.end, before.end - head.end)  # that sync ends before ours
    keeper = TxidKeeper(CoveringCheck(path))
    with anyio.fail_after(5):
        async with litestream(check) as made:
            keeper.promise(answer[0])
            await kept(keeper)
    assert made == [12] and keeper.bumps == 0


async def test_an_idle_keeper_reads_and_writes_nothing(db: tuple[Path, sqlite3.Connection]) -> None:
    path, _ = db
    keeper = TxidKeeper(CoveringCheck(path))
    before = wal_end(path)
    await asyncio.sleep(0.05)
    assert not keeper.running  # no promise: no task at all
    keeper.promise(10)  # exists already
    with anyio.fail_after(5):
        await kept(keeper)
    assert keeper.bumps == 0 and wal_end(path) == before


async def test_without_syncs_the_keeper_bumps_a_few_times_then_gives_up(
    db: tuple[Path, sqlite3.Connection], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, conn = db
    monkeypatch.setattr(litestream_keeper, "STALL", 0.01)
    monkeypatch.setattr(litestream_keeper, "GIVE_UP", 0.3)
    keeper = TxidKeeper(CoveringCheck(path))
    keeper.promise(12)  # and no Litestream to sync anything
    with anyio.fail_after(5):
        await kept(keeper)
    assert keeper.bumps == MAX_BUMPS
    assert conn.execute("SELECT seq FROM _litestream_seq").fetchall() == [(MAX_BUMPS,)]


async def test_close_keeps_the_outstanding_promise_then_stops(
    db: tuple[Path, sqlite3.Connection], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, conn = db
    check = CoveringCheck(path)
    conn.execute("INSERT INTO t VALUES (1)")
    assert sync(check) == 11  # took the commit: 12 needs the keeper
    keeper = TxidKeeper(CoveringCheck(path))
    with anyio.fail_after(5):
        async with litestream(check):
            keeper.promise(12)
            await keeper.aclose()  # at once: a replica may be waiting on 12 right now
            assert newest(check) == 12 and not keeper.running
        monkeypatch.setattr(litestream_keeper, "CLOSE_WAIT", 0.05)
        keeper.promise(20)  # that Litestream (stopped) will never make
        await keeper.aclose()
    assert not keeper.running


async def test_the_engine_answers_from_files_keeps_its_promises_and_falls_back_when_it_cannot_write(
    db: tuple[Path, sqlite3.Connection], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, conn = db
    monkeypatch.setattr(litestream_keeper, "CLOSE_WAIT", 0.05)  # no Litestream here to keep a promise
    engine = LitestreamEngine(path, Role.PRIMARY, socket_path=path.parent / "no.sock")
    exact: list[str] = []

    async def group_sync() -> Txid:
        exact.append("POST /sync")
        return Txid(99)

    engine._group_sync = group_sync  # type: ignore[method-assign]
    engine.quiet_gap = float("inf")  # from the files only (no sync-status: there is no Litestream here)
    with anyio.fail_after(5):
        assert await engine.promise_position() == 10  # the newest holds the WAL end
        assert not engine.keeper.running
        conn.execute("INSERT INTO t VALUES (1)")
        assert await engine.promise_position() == 12
        assert engine.keeper.running and engine.keeper.promised == 12
        assert engine.position == 12
        await engine.aclose()
        assert not engine.keeper.running and exact == []

        with closing(sqlite3.connect(path)) as other:
            other.execute("DROP TABLE _litestream_seq")  # a Litestream that keeps no such table
        engine.keeper.promise(13)
        await kept(engine.keeper)
        assert engine.keeper.failed is not None and "_litestream_seq" in engine.keeper.failed
        conn.execute("INSERT INTO t VALUES (2)")
        assert await engine.promise_position() == 99  # promises stop: a forced sync instead
        assert exact == ["POST /sync"]


async def test_a_quiet_primary_asks_sync_status_once_and_answers_the_next_txid_when_no_sync_runs(
    db: tuple[Path, sqlite3.Connection],
) -> None:
    path, conn = db
    check = CoveringCheck(path)
    asked: list[str] = []
    active = False

    async def request(method: str, target: str, **_: object) -> dict[str, object]:
        asked.append(target)
        return {"databases": [{"path": str(path), "active": active}]}

    assert await check.promise_after_status(request) == (10, False) and asked == []  # held already: no question
    conn.execute("INSERT INTO t VALUES (1)")
    assert await check.promise_after_status(request) == (11, False)  # exists soon: our frames are pending
    active = True
    assert await check.promise_after_status(request) == (12, True)  # the running sync may hold it, or not
    assert asked == ["/debug/sync-status"] * 2

    async def failing(method: str, target: str, **_: object) -> dict[str, object]:
        raise EngineUnavailable("no socket")

    assert await check.promise_after_status(failing) is None  # then commit_position() decides
