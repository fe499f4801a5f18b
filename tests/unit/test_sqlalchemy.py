"""forwarder.sqlalchemy: the access rule through SQLAlchemy's pool events, sync and async."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy
import sqlmodel
from sqlalchemy import Engine, String, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import QueuePool
from sqlmodel import Field, Session, SQLModel

from forwarder import ConfigurationError, Forwarder, MemoryEngine, MemoryLog, Role, Topology, Txid
from forwarder.middleware.discovery import needs_primary
from forwarder.sqlalchemy import ReplicaPooling, _Binding, create_async_engine, create_engine
from tests.sqlite_locks import eventually, free_for_the_follower


def node(role: Role) -> tuple[Forwarder, MemoryEngine]:
    engine = MemoryEngine(MemoryLog(), role, primary_id="p" if role is Role.REPLICA else None)
    topology = Topology("n", "ams", role, primary_url="http://127.0.0.1:9", primary_id="p")
    return Forwarder(engine=engine, topology=topology, secret="s"), engine


def make_db(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.execute("INSERT INTO t (v) VALUES ('first')")
    conn.close()
    return path


def insert(engine: Engine, value: str) -> None:
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": value})


def count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM t")).scalar_one())


def assert_read_only(engine: Engine) -> None:
    with pytest.raises(OperationalError, match="readonly") as caught:
        insert(engine, "refused")
    assert needs_primary(caught.value) == "readonly"  # what makes the middleware forward the request


@pytest.mark.parametrize(
    "url",
    ["sqlite:///{dir}/my app.db", "sqlite:///file:{dir}/my app.db?cache=private&mode=rwc&uri=true"],
)
def test_a_replica_reads_and_refuses_writes(tmp_path: Path, url: str) -> None:
    make_db(tmp_path / "my app.db")
    replica, _ = node(Role.REPLICA)
    engine = create_engine(url.format(dir=tmp_path), forwarder=replica)
    assert count(engine) == 1
    assert_read_only(engine)
    assert count(engine) == 1
    engine.dispose()


def test_a_relative_url_opens_the_same_file_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_db(tmp_path / "data" / "app.db")
    monkeypatch.chdir(tmp_path)
    replica, _ = node(Role.REPLICA)
    for url in ("sqlite:///data/app.db", "sqlite:///file:data/app.db?uri=true"):
        engine = create_engine(url, forwarder=replica)
        assert count(engine) == 1
        assert_read_only(engine)
        engine.dispose()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no stray file created elsewhere


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?uri=true"])
@pytest.mark.parametrize("role", [Role.PRIMARY, Role.REPLICA])
def test_an_in_memory_database_is_refused_on_a_cluster(url: str, role: Role) -> None:
    forwarder, _ = node(role)
    engine = create_engine(url, forwarder=forwarder)
    with pytest.raises(ConfigurationError, match="in-memory.*FORWARDER_DATABASE"):
        engine.connect()


def test_without_a_running_forwarder_the_engine_is_sqlalchemys_own() -> None:
    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (v TEXT)"))
        conn.execute(text("INSERT INTO t VALUES ('local')"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT v FROM t")).scalar_one() == "local"


def test_creator_and_other_databases_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="creator= bypasses the URL"):
        create_engine("sqlite://", creator=lambda: sqlite3.connect(":memory:"))
    with pytest.raises(ConfigurationError, match="SQLite only"):
        create_engine("postgresql://user@host/db", module=sqlite3)


def test_the_primary_pools_connections_with_wal_and_the_pragmas(tmp_path: Path) -> None:
    primary, _ = node(Role.PRIMARY)
    engine = create_engine(f"sqlite:///{tmp_path}/new.db", forwarder=primary)
    with engine.connect() as conn:
        first = conn.connection.dbapi_connection
        assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar_one() == 5000
    primary.tracker.advance(Txid(7))  # the primary's own commits never make its connections stale
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection is first
    engine.dispose()


def test_every_replica_read_sees_the_file_now_and_an_idle_engine_leaves_it_free(tmp_path: Path) -> None:
    path = make_db(tmp_path / "app.db")
    replica, _ = node(Role.REPLICA)
    engine = create_engine(f"sqlite:///{path}", forwarder=replica)
    writer = sqlite3.connect(path)
    for expected in range(1, 6):
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == expected
        writer.execute("INSERT INTO t (v) VALUES ('more')")
        writer.commit()
    writer.close()
    assert eventually(lambda: free_for_the_follower(path))
    engine.dispose()


def test_with_pooled_replica_connections_a_position_change_recycles_them(tmp_path: Path) -> None:
    # The alternative rule (measured, not the default): reuse only while the position is unchanged.
    path = make_db(tmp_path / "app.db")
    replica, _ = node(Role.REPLICA)
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    _Binding(engine, replica, replica_pooling=ReplicaPooling.RECYCLE).listen()
    with engine.connect() as conn:
        first = conn.connection.dbapi_connection
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection is first  # position unchanged: reused
    replica.tracker.advance(Txid(2))
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection is not first
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        first.execute("SELECT 1")  # type: ignore[union-attr]
    engine.dispose()


def test_the_engine_follows_role_changes_both_ways(tmp_path: Path) -> None:
    path = make_db(tmp_path / "app.db")
    forwarder, engine_ = node(Role.REPLICA)
    engine = create_engine(f"sqlite:///{path}", forwarder=forwarder)
    assert_read_only(engine)
    engine_.fail_over(Role.PRIMARY, None)  # promoted
    insert(engine, "after promotion")
    with engine.connect() as conn:
        pooled = conn.connection.dbapi_connection
        assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
    engine_.fail_over(Role.REPLICA, "p2")  # demoted: the pooled read-write connection must go
    assert_read_only(engine)
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        pooled.execute("SELECT 1")  # type: ignore[union-attr]
    assert count(engine) == 2
    engine.dispose()


@pytest.mark.anyio
async def test_the_forwarder_is_found_when_the_first_connection_opens(tmp_path: Path) -> None:
    path = make_db(tmp_path / "app.db")
    engine = create_engine(f"sqlite:///{path}")  # at import time: no forwarder yet
    replica, _ = node(Role.REPLICA)
    async with replica:
        assert_read_only(engine)
    insert(engine, "no forwarder any more: a plain engine")  # a script on the same file
    engine.dispose()


class Hero(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str


def test_sqlmodel_sessions_write_on_the_primary_and_read_on_a_replica(tmp_path: Path) -> None:
    primary, _ = node(Role.PRIMARY)
    replica, _ = node(Role.REPLICA)
    url = f"sqlite:///{tmp_path}/heroes.db"
    primary_engine, replica_engine = create_engine(url, forwarder=primary), create_engine(url, forwarder=replica)
    SQLModel.metadata.create_all(primary_engine)
    with Session(primary_engine) as session:
        session.add(Hero(name="Ada"))
        session.commit()
    with Session(replica_engine) as session:
        assert [h.name for h in session.exec(sqlmodel.select(Hero))] == ["Ada"]
        session.add(Hero(name="Refused"))
        with pytest.raises(OperationalError, match="readonly"):
            session.commit()
    primary_engine.dispose()
    replica_engine.dispose()


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(100))


@pytest.mark.anyio
async def test_async_engine_follows_role_changes_with_an_async_session(tmp_path: Path) -> None:
    forwarder, engine_ = node(Role.PRIMARY)
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/notes db.sqlite", forwarder=forwarder)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        assert (await conn.execute(text("PRAGMA journal_mode"))).scalar_one() == "wal"
    async with AsyncSession(engine) as session:
        session.add(Note(text="on the primary"))
        await session.commit()
    engine_.fail_over(Role.REPLICA, "p2")
    async with AsyncSession(engine) as session:
        assert (await session.scalars(select(Note.text))).all() == ["on the primary"]
        session.add(Note(text="refused"))
        with pytest.raises(OperationalError, match="readonly") as caught:
            await session.commit()
        assert needs_primary(caught.value) == "readonly"
    engine_.fail_over(Role.PRIMARY, None)
    async with AsyncSession(engine) as session:
        session.add(Note(text="promoted again"))
        await session.commit()
        assert len((await session.scalars(select(Note))).all()) == 2
    await engine.dispose()


@pytest.mark.anyio
async def test_an_idle_async_replica_engine_keeps_no_connection_open(tmp_path: Path) -> None:
    path = make_db(tmp_path / "app.db")
    replica, _ = node(Role.REPLICA)
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", forwarder=replica)
    writer = sqlite3.connect(path)
    for expected in (1, 2, 3):
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == expected
        writer.execute("INSERT INTO t (v) VALUES ('more')")
        writer.commit()
    assert isinstance(engine.sync_engine.pool, QueuePool)
    assert engine.sync_engine.pool.checkedin() == 1
    writer.close()
    await engine.dispose()


def test_importing_forwarder_does_not_import_sqlalchemy() -> None:
    code = "import sys, forwarder; assert 'sqlalchemy' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
