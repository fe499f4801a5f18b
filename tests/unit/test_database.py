"""The node's SQLite database: primary connections reused safely, replica connections fresh and read-only."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio.to_thread
import pytest

from forwarder import Database


class Role:
    def __init__(self, primary: bool) -> None:
        self.primary = primary

    def __call__(self) -> bool:
        return self.primary


def primary_database(tmp_path: Path) -> tuple[Database, Role]:
    role = Role(primary=True)
    database = Database(tmp_path / "app.db", is_primary=role)
    database.initialize()
    with database.write() as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    return database, role


def test_primary_reuses_a_connection_after_a_commit(tmp_path: Path) -> None:
    database, _ = primary_database(tmp_path)
    with database.write() as first:
        first.execute("INSERT INTO t (v) VALUES ('a')")
    with database.read() as second:
        assert second is first
        assert second.execute("SELECT v FROM t").fetchone()["v"] == "a"
        assert second.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    database.close()


def test_a_failed_write_rolls_back_and_leaves_a_clean_connection(tmp_path: Path) -> None:
    database, _ = primary_database(tmp_path)
    with pytest.raises(ValueError), database.write() as conn:
        conn.execute("INSERT INTO t (v) VALUES ('lost')")
        raise ValueError("handler failed")
    with database.read() as again:
        assert again is conn and not again.in_transaction
        assert again.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    database.close()


def test_a_connection_left_in_a_transaction_is_not_reused(tmp_path: Path) -> None:
    database, _ = primary_database(tmp_path)
    with database.read() as conn:
        conn.execute("BEGIN")
    with database.read() as other:
        assert other is not conn
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")  # it was closed, not kept
    database.close()


def test_a_changed_row_factory_is_reset_for_the_next_user(tmp_path: Path) -> None:
    database, _ = primary_database(tmp_path)
    with database.read() as conn:
        conn.row_factory = None
    with database.read() as again:
        assert again is conn and again.row_factory is sqlite3.Row
    database.close()


@pytest.mark.anyio
async def test_connections_move_between_worker_threads(tmp_path: Path) -> None:
    database, _ = primary_database(tmp_path)

    def insert(value: str) -> None:
        with database.write() as conn:
            conn.execute("INSERT INTO t (v) VALUES (?)", (value,))

    for i in range(20):
        await anyio.to_thread.run_sync(insert, str(i))
    with database.read() as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 20
    database.close()


def test_demotion_closes_kept_connections_and_reads_become_read_only(tmp_path: Path) -> None:
    database, role = primary_database(tmp_path)
    with database.read() as kept:
        pass
    role.primary = False
    with database.read() as conn:
        assert conn is not kept
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("INSERT INTO t (v) VALUES ('x')")
    with pytest.raises(sqlite3.ProgrammingError):
        kept.execute("SELECT 1")


def test_a_connection_opened_as_replica_is_not_kept_after_promotion(tmp_path: Path) -> None:
    database, role = primary_database(tmp_path)
    role.primary = False
    with database.read() as read_only:
        role.primary = True  # promoted while the read runs
    with database.write() as conn:
        assert conn is not read_only
        conn.execute("INSERT INTO t (v) VALUES ('after promotion')")
    database.close()


def test_close_closes_idle_connections(tmp_path: Path) -> None:
    database, _ = primary_database(tmp_path)
    with database.read() as conn:
        pass
    database.close()
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")


@pytest.mark.anyio
async def test_as_many_connections_as_anyio_runs_threads_are_kept_for_the_next_wave(tmp_path: Path) -> None:
    from contextlib import ExitStack

    database, _ = primary_database(tmp_path)
    threads = int(anyio.to_thread.current_default_thread_limiter().total_tokens)
    with ExitStack() as stack:  # a wave of concurrent users, each holding a connection of its own
        first = [stack.enter_context(database.read()) for _ in range(threads + 1)]
    with ExitStack() as stack:
        second = [stack.enter_context(database.read()) for _ in range(threads)]
    # `first` keeps every connection alive, so no new one can take the id of one closed.
    assert len({id(conn) for conn in first}) == threads + 1
    assert {id(conn) for conn in second} <= {id(conn) for conn in first}  # all kept, none opened again
    database.close()
