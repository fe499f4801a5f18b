"""forwarder.sqlalchemy on a replica: idle connections are kept only while they cannot hold the follower up."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine

from forwarder import Forwarder, MemoryEngine, MemoryLog, Role, Topology, Txid
from forwarder.follower_lock import WriterProbe, is_wal_file
from forwarder.sqlalchemy import _Binding, create_async_engine, create_engine
from tests.sqlite_locks import eventually, follower_asking_for, free_for_the_follower


def replica() -> Forwarder:
    engine = MemoryEngine(MemoryLog(), Role.REPLICA, primary_id="p")
    topology = Topology("r", "ams", Role.REPLICA, primary_url="http://127.0.0.1:9", primary_id="p")
    return Forwarder(engine=engine, topology=topology, secret="s")


def make_db(path: Path, journal: str = "WAL") -> Path:
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA journal_mode = {journal}")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.execute("INSERT INTO t (v) VALUES ('first')")
    conn.close()
    return path


def closed(dbapi_connection: object) -> bool:
    """For a connection no longer in the pool (nothing else can be closing it meanwhile)."""
    try:
        dbapi_connection.execute("SELECT 1")  # type: ignore[attr-defined]
    except sqlite3.ProgrammingError:
        return True
    return False


def lingering(path: Path, forwarder: Forwarder, seconds: float) -> Engine:
    """A replica engine whose idle connections linger `seconds` (the default is 10 ms): reuse is then certain."""
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    _Binding(engine, forwarder, linger=seconds).listen()
    return engine


def reaper_running() -> bool:
    return any(thread.name == "forwarder-replica-pool" for thread in threading.enumerate())


def test_an_idle_connection_is_reused_then_closed_after_the_linger(tmp_path: Path) -> None:
    path = make_db(tmp_path / "app.db")
    engine = lingering(path, replica(), 1.0)
    with engine.connect() as conn:
        conn.execute(text("SELECT count(*) FROM t"))  # a reader that has read holds the file
        first = conn.connection.dbapi_connection
    assert not free_for_the_follower(path)  # held by the idle connection
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection is first
        assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 1
    assert eventually(lambda: free_for_the_follower(path))
    assert eventually(lambda: not reaper_running())  # the reaper lives only while connections are idle
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection is not first
    engine.dispose()


def test_a_waiting_follower_gets_the_file_at_once(tmp_path: Path) -> None:
    path = make_db(tmp_path / "app.db")
    engine = lingering(path, replica(), 60.0)
    with engine.connect() as conn:
        conn.execute(text("SELECT count(*) FROM t"))  # a reader that has read holds the file
        pooled = conn.connection.dbapi_connection
    with follower_asking_for(path):
        assert WriterProbe().writer_waiting(str(path))
        assert eventually(lambda: free_for_the_follower(path), 5.0)  # far sooner than the 60 s linger
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection is not pooled
    engine.dispose()


def test_a_new_generation_of_the_file_retires_the_old_connections_within_a_tick(tmp_path: Path) -> None:
    # The position did not move here: what a re-restore to the same txid does. (Once it moves, no
    # old connection is handed out at all: the next test.)
    path = make_db(tmp_path / "app.db")
    engine = lingering(path, replica(), 60.0)
    with engine.connect() as conn:
        conn.execute(text("SELECT count(*) FROM t"))  # a reader that has read holds the file
        old = conn.connection.dbapi_connection
    restored = tmp_path / "restored.db"
    shutil.copy(path, restored)
    with sqlite3.connect(restored) as writer:
        writer.execute("INSERT INTO t (v) VALUES ('second')")
    writer.close()
    restored.replace(path)  # what a re-restore's swap does to the path the URL names

    def reads_the_new_file() -> bool:
        with engine.connect() as conn:
            return bool(conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 2)

    assert eventually(reads_the_new_file, 1.0)
    assert closed(old)
    engine.dispose()


def test_a_moved_position_retires_pooled_connections(tmp_path: Path) -> None:
    path = make_db(tmp_path / "app.db")
    forwarder = replica()
    engine = lingering(path, forwarder, 60.0)
    with engine.connect() as conn:
        conn.execute(text("SELECT count(*) FROM t"))  # a reader that has read holds the file
        old = conn.connection.dbapi_connection
    forwarder.tracker.advance(Txid(5))
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection is not old
    assert closed(old)
    engine.dispose()


def test_rollback_journal_connections_are_never_pooled(tmp_path: Path) -> None:
    # In rollback mode a reader holds no lock between reads, so the follower could write under its page cache.
    path = make_db(tmp_path / "app.db", journal="DELETE")
    engine = lingering(path, replica(), 60.0)
    with engine.connect() as conn:
        conn.execute(text("SELECT count(*) FROM t"))  # a reader that has read holds the file
        first = conn.connection.dbapi_connection
    assert closed(first)
    engine.dispose()


def test_threads_share_the_pool_and_leave_nothing_open(tmp_path: Path) -> None:
    path = make_db(tmp_path / "app.db")
    forwarder = replica()
    engine = create_engine(f"sqlite:///{path}", forwarder=forwarder)
    opened: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def read(rounds: int) -> None:
        try:
            for _ in range(rounds):
                with engine.connect() as conn:
                    assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 1
                    with lock:
                        opened.append(id(conn.connection.dbapi_connection))
        except BaseException as error:  # reported below, with the thread's failure
            errors.append(error)

    threads = [threading.Thread(target=read, args=(150,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for position in range(2, 40):
        forwarder.tracker.advance(Txid(position))  # each move retires the pooled connections
        read(2)
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(set(opened)) < len(opened)  # connections were reused
    assert eventually(lambda: free_for_the_follower(path))
    engine.dispose()


@pytest.mark.anyio
async def test_async_connections_are_shared_while_busy_and_closed_when_idle(tmp_path: Path) -> None:
    path = make_db(tmp_path / "app.db")
    engine: AsyncEngine = create_async_engine(f"sqlite+aiosqlite:///{path}", forwarder=replica())
    async with engine.connect() as busy:
        await busy.execute(text("SELECT 1"))
        async with engine.connect() as conn:
            first = (await conn.get_raw_connection()).driver_connection
        async with engine.connect() as conn:
            assert (await conn.get_raw_connection()).driver_connection is first
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 1
    assert free_for_the_follower(path)  # the last one out closed them all, on the event loop
    await engine.dispose()


@pytest.fixture(autouse=True)
def _no_leftover_reaper() -> Iterator[None]:
    yield
    assert eventually(lambda: not reaper_running(), 5.0)


@pytest.mark.parametrize(
    ("content", "wal"),
    [
        (None, False),  # missing
        (b"", False),
        (b"not a database at all, but long enough", False),
        (b"SQLite format 3\x00\x10\x00\x01\x01" + bytes(80), False),  # rollback journal
        (b"SQLite format 3\x00\x10\x00\x02\x02" + bytes(80), True),
        (b"SQLite format 3\x00\x10\x00\x02", False),  # cut short
    ],
)
def test_wal_mode_is_read_from_the_header(tmp_path: Path, content: bytes | None, wal: bool) -> None:
    path = tmp_path / "app.db"
    if content is not None:
        path.write_bytes(content)
    assert is_wal_file(str(path)) is wal


def test_a_real_wal_database_header_says_wal(tmp_path: Path) -> None:
    assert is_wal_file(str(make_db(tmp_path / "wal.db")))
    assert not is_wal_file(str(make_db(tmp_path / "rollback.db", journal="DELETE")))
