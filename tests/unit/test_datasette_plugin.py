"""forwarder.datasette: each plugin hook, and ForwarderDatabase's connections on each role (MemoryEngine)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from datasette.app import Datasette

from forwarder import Forwarder, ForwarderMiddleware, MemoryEngine, MemoryLog, Role, Topology, datasette as plugin
from forwarder._late import RaiseNoted
from forwarder.datasette import ForwarderDatabase, cluster_secret
from forwarder.middleware.discovery import needs_primary

pytestmark = pytest.mark.anyio


def node(role: Role) -> Forwarder:
    engine = MemoryEngine(MemoryLog(), role, primary_id="p" if role is Role.REPLICA else None)
    return Forwarder(engine=engine, topology=Topology("n", "ams", role, primary_url="http://127.0.0.1:9"), secret="s")


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.close()
    monkeypatch.setenv("FORWARDER_DATABASE", str(path))
    monkeypatch.delenv("DATASETTE_SECRET", raising=False)
    return path


def test_the_secret_is_derived_from_forwarder_secret_unless_datasette_secret_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DATASETTE_SECRET", raising=False)
    monkeypatch.delenv("FORWARDER_SECRET", raising=False)
    assert cluster_secret() is None
    monkeypatch.setenv("FORWARDER_SECRET", "rpc-key")
    derived = cluster_secret()
    assert derived == cluster_secret("rpc-key") and derived != "rpc-key" and len(derived or "") == 64
    assert cluster_secret("other") != derived
    monkeypatch.setenv("DATASETTE_SECRET", "mine")
    assert cluster_secret() == "mine"


async def test_startup_serves_the_replicated_file_as_a_forwarder_database(database: Path) -> None:
    ds = Datasette([str(database)])
    await ds.invoke_startup()  # runs the plugin's startup hook (entry point)
    db = ds.get_database("app")
    assert isinstance(db, ForwarderDatabase) and db.route == "app"
    ds.close()


async def test_startup_adds_the_replicated_file_when_datasette_was_not_given_it(database: Path) -> None:
    ds = Datasette([])
    await ds.invoke_startup()
    assert isinstance(ds.get_database("app"), ForwarderDatabase)
    ds.close()


async def test_the_hooks_do_nothing_outside_a_cluster(database: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORWARDER_DATABASE")
    assert plugin.asgi_wrapper(datasette=None) is None
    ds = Datasette([str(database)])
    await ds.invoke_startup()
    assert type(ds.get_database("app")) is not ForwarderDatabase
    ds.close()


def test_asgi_wrapper_puts_datasette_inside_the_middleware(database: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARDER_ROLE", "primary")
    wrap = plugin.asgi_wrapper(datasette=None)
    assert wrap is not None
    wrapped = wrap("the app")
    assert isinstance(wrapped, ForwarderMiddleware) and isinstance(wrapped.app, RaiseNoted)


async def test_handle_exception_notes_a_read_only_error_for_the_middleware(database: Path) -> None:
    class Request:
        scope: dict[str, Any] = {"type": "http"}

    error = sqlite3.OperationalError("attempt to write a readonly database")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        Request.scope = dict(scope)
        assert plugin.handle_exception(datasette=None, request=Request(), exception=error) is None

    with pytest.raises(sqlite3.OperationalError):
        await RaiseNoted(app)({"type": "http"}, None, None)  # type: ignore[arg-type]


class Counting(ForwarderDatabase):
    opened = 0

    def connect(self, write: bool = False) -> sqlite3.Connection:
        Counting.opened += 1
        return super().connect(write=write)


async def test_on_a_replica_every_read_gets_a_fresh_connection_and_writes_are_refused(database: Path) -> None:
    ds = Datasette([])
    db = ds.add_database(Counting(ds, str(database)), name="app")
    replica = node(Role.REPLICA)
    with replica.activate():
        Counting.opened = 0
        for _ in range(3):
            assert (await db.execute("select count(*) from notes")).first()[0] == 0
        assert Counting.opened == 3 and not db._all_connections  # nothing left open on the follower's file
        with pytest.raises(sqlite3.OperationalError, match="readonly") as caught:
            await db.execute_write("insert into notes (body) values ('x')")
        assert needs_primary(caught.value) == "readonly"
        assert db._write_thread is None  # no write thread holding a connection on a replica
    ds.close()


async def test_on_the_primary_writes_run_with_wal_and_the_pragmas(database: Path) -> None:
    ds = Datasette([])
    db = ds.add_database(ForwarderDatabase(ds, str(database)), name="app")
    primary = node(Role.PRIMARY)
    with primary.activate():
        await db.execute_write("insert into notes (body) values ('x')")
        timeout = await db.execute_write_fn(lambda conn: conn.execute("PRAGMA busy_timeout").fetchone()[0])
        assert timeout == 5000
        assert (await db.execute("select body from notes")).first()[0] == "x"
    ds.close()


async def test_forwarders_own_tables_are_hidden_from_the_table_list(database: Path) -> None:
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE _forwarder_rpc_calls (id TEXT PRIMARY KEY, expires REAL)")
    conn.close()
    ds = Datasette([str(database)])
    await ds.invoke_startup()
    db = ds.get_database("app")
    assert "_forwarder_rpc_calls" in await db.hidden_table_names()
    assert "notes" not in await db.hidden_table_names()
    page = await ds.client.get("/app.json")
    assert "_forwarder_rpc_calls" not in [t["name"] for t in page.json()["tables"] if not t["hidden"]]
    ds.close()
