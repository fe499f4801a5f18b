"""The follower guard on real SQLite files: app writes are seen, read-only readers and restores are not."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from forwarder.engines.follower_guard import FollowerGuard


def _follower_file(path: Path) -> None:
    """A database the way a Litestream follower leaves it: WAL in the header, no -wal frames."""
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (x)")
        db.commit()
    path.with_name(path.name + "-txid").write_text("0000000000000001\n")


@pytest.fixture
def guard(tmp_path: Path) -> Iterator[FollowerGuard]:
    database = tmp_path / "app.db"
    _follower_file(database)
    guard = FollowerGuard(database)
    assert guard.start()
    yield guard
    guard.close()


def test_read_only_readers_are_not_writes(guard: FollowerGuard) -> None:
    for _ in range(3):
        with closing(sqlite3.connect(f"{guard.database.as_uri()}?mode=ro", uri=True)) as db:
            db.execute("SELECT count(*) FROM t").fetchone()
    assert guard.check() == 0 and guard.problem is None


def test_a_read_on_a_writable_connection_is_not_a_write(guard: FollowerGuard) -> None:
    with closing(sqlite3.connect(guard.database)) as db:
        db.execute("SELECT count(*) FROM t").fetchone()
    assert guard.check() == 0


def test_a_write_through_a_writable_connection_is_seen_at_once(guard: FollowerGuard) -> None:
    with closing(sqlite3.connect(guard.database)) as db:
        db.execute("INSERT INTO t VALUES (1)")
        db.commit()
        # Checked while the connection is still open and before any checkpoint: what a request sees.
        assert guard.check() >= 1
    problem = guard.problem
    assert problem is not None
    assert str(guard.database) in problem and "mode=ro" in problem and "forwarder.sqlalchemy" in problem


def test_a_write_in_rollback_journal_mode_is_seen(tmp_path: Path) -> None:
    database = tmp_path / "legacy.db"
    with closing(sqlite3.connect(database)) as db:
        db.execute("CREATE TABLE t (x)")
        db.commit()
    guard = FollowerGuard(database)
    assert guard.start()
    try:
        with closing(sqlite3.connect(database)) as db:
            db.execute("INSERT INTO t VALUES (1)")
            db.commit()
        assert guard.check() >= 1 and guard.problem is not None
    finally:
        guard.close()


def test_the_problem_clears_once_a_restore_has_replaced_the_file(guard: FollowerGuard) -> None:
    with closing(sqlite3.connect(guard.database)) as db:
        db.execute("INSERT INTO t VALUES (1)")
        db.commit()
    guard.check()
    assert guard.problem is not None
    # What a re-restore does: wipe the files, write a new database beside it, rename it into place,
    # then write -txid.
    txid = guard.database.with_name("app.db-txid")
    for suffix in ("", "-wal", "-shm", "-txid"):
        guard.database.with_name("app.db" + suffix).unlink(missing_ok=True)
    guard.check()
    assert guard.problem is not None, "cleared before the restore finished"
    fresh = guard.database.with_name("app.db.tmp")
    _follower_file(fresh)
    os.replace(fresh, guard.database)
    guard.check()
    assert guard.problem is not None, "cleared before -txid was written"
    txid.write_text("0000000000000002\n")
    guard.check()
    assert guard.problem is None


def test_a_write_after_a_restore_is_seen_again(guard: FollowerGuard) -> None:
    for value in (1, 2):
        with closing(sqlite3.connect(guard.database)) as db:
            db.execute("INSERT INTO t VALUES (?)", (value,))
            db.commit()
        guard.check()
    assert guard.writes >= 2 and guard.problem is not None


def test_a_write_is_seen_even_after_its_connection_checkpointed_and_removed_the_wal(guard: FollowerGuard) -> None:
    with closing(sqlite3.connect(guard.database)) as db:
        db.execute("INSERT INTO t VALUES (1)")
        db.commit()
    assert not guard.wal.exists() or guard.wal.stat().st_size == 0  # nothing left to find on disk
    assert guard.check() >= 1 and guard.problem is not None


def test_the_check_reads_every_waiting_record(guard: FollowerGuard) -> None:
    # Many read-only readers leave many records; a write among them is still found.
    for _ in range(200):
        with closing(sqlite3.connect(f"{guard.database.as_uri()}?mode=ro", uri=True)) as db:
            db.execute("SELECT 1 FROM t").fetchall()
    with closing(sqlite3.connect(guard.database)) as db:
        db.execute("INSERT INTO t VALUES (1)")
        db.commit()
    assert guard.check() >= 1


@pytest.mark.anyio
async def test_a_litestream_replica_counts_writes_with_the_guards_own_check(tmp_path: Path) -> None:
    from forwarder.engines.base import Role
    from forwarder.engines.litestream import LitestreamEngine

    database = tmp_path / "app.db"
    _follower_file(database)
    engine = LitestreamEngine(database, Role.REPLICA)
    assert engine.write_counter is None  # not watching yet: nothing to count with
    await engine.start()
    try:
        counter = engine.write_counter
        assert counter is not None and counter() == 0 and engine.unreadable is None
        with closing(sqlite3.connect(database)) as db:
            db.execute("INSERT INTO t VALUES (1)")
            db.commit()
            assert counter() >= 1
        assert engine.unreadable == "modified"
    finally:
        await engine.aclose()
    assert LitestreamEngine(database, Role.PRIMARY).write_counter is None
