"""forwarder.django: Django's sqlite3 backend under the access rule, across role changes (MemoryEngine)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings
from django.db.utils import ConnectionHandler, OperationalError

from forwarder import Forwarder, MemoryEngine, MemoryLog, Role, Topology, Txid
from forwarder._late import RaiseNoted, note
from forwarder.django.base import DatabaseWrapper, MigrateOnReplica
from forwarder.middleware.discovery import needs_primary

if not settings.configured:
    settings.configure(INSTALLED_APPS=[], USE_TZ=True)
    django.setup()


def node(role: Role) -> tuple[Forwarder, MemoryEngine]:
    engine = MemoryEngine(MemoryLog(), role, primary_id="p" if role is Role.REPLICA else None)
    topology = Topology("n", "ams", role, primary_url="http://127.0.0.1:9", primary_id="p")
    return Forwarder(engine=engine, topology=topology, secret="s"), engine


def make_db(path: Path) -> Path:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.close()
    return path


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[DatabaseWrapper]:
    handler = ConnectionHandler(
        {"default": {"ENGINE": "forwarder.django", "NAME": str(make_db(tmp_path / "my app.db")), "CONN_MAX_AGE": 600}}
    )
    wrapper: DatabaseWrapper = handler["default"]
    assert isinstance(wrapper, DatabaseWrapper)
    yield wrapper
    wrapper.close()


def insert(wrapper: DatabaseWrapper) -> None:
    with wrapper.cursor() as cursor:
        cursor.execute("INSERT INTO t (v) VALUES ('x')")


def pragma(wrapper: DatabaseWrapper, name: str) -> Any:
    with wrapper.cursor() as cursor:
        cursor.execute(f"PRAGMA {name}")
        return cursor.fetchone()[0]


def test_on_a_replica_the_connection_is_read_only_and_a_write_means_forward(backend: DatabaseWrapper) -> None:
    replica, _ = node(Role.REPLICA)
    with replica.activate():
        params = backend.get_connection_params()
        name = Path(backend.settings_dict["NAME"]).as_posix().replace(" ", "%20")
        assert params["database"] == f"file:{name}?mode=ro"
        assert params["uri"] is True
        with pytest.raises(OperationalError, match="readonly") as caught:
            insert(backend)
        assert needs_primary(caught.value) == "readonly"


def test_a_replica_connection_never_outlives_a_request_whatever_conn_max_age(backend: DatabaseWrapper) -> None:
    replica, _ = node(Role.REPLICA)
    with replica.activate():
        pragma(backend, "user_version")
        assert backend.connection is not None
        backend.close_if_unusable_or_obsolete()  # what Django runs at request_finished
        assert backend.connection is None


def test_a_replica_connection_is_unusable_once_the_position_moved(backend: DatabaseWrapper) -> None:
    replica, _ = node(Role.REPLICA)
    with replica.activate():
        pragma(backend, "user_version")
        assert backend.is_usable()
        replica.tracker.advance(Txid(7))
        assert not backend.is_usable()  # CONN_HEALTH_CHECKS would replace it


def test_on_the_primary_wal_and_pragmas_and_the_connection_is_kept(backend: DatabaseWrapper) -> None:
    primary, _ = node(Role.PRIMARY)
    with primary.activate():
        assert backend.get_connection_params()["database"] == backend.settings_dict["NAME"]
        insert(backend)
        assert pragma(backend, "journal_mode") == "wal"
        assert pragma(backend, "busy_timeout") == 5000
        kept = backend.connection
        backend.close_if_unusable_or_obsolete()
        assert backend.connection is kept  # CONN_MAX_AGE=600 is honoured on the primary


def test_the_backend_follows_role_changes_both_ways(backend: DatabaseWrapper) -> None:
    forwarder, engine = node(Role.REPLICA)
    with forwarder.activate():
        with pytest.raises(OperationalError, match="readonly"):
            insert(backend)
        backend.close_if_unusable_or_obsolete()
        engine.fail_over(Role.PRIMARY, None)  # promoted
        insert(backend)
        primary_connection = backend.connection
        engine.fail_over(Role.REPLICA, "p2")  # demoted: the read-write connection must go
        assert not backend.is_usable()
        backend.close_if_unusable_or_obsolete()
        assert backend.connection is None
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            primary_connection.execute("SELECT 1")
        with pytest.raises(OperationalError, match="readonly"):
            insert(backend)


def test_migrate_is_refused_on_a_replica_and_allowed_on_the_primary(backend: DatabaseWrapper) -> None:
    replica, _ = node(Role.REPLICA)
    with replica.activate(), pytest.raises(MigrateOnReplica, match="Run `manage.py migrate` on the primary"):
        backend.prepare_database()
    primary, _ = node(Role.PRIMARY)
    with primary.activate():
        backend.prepare_database()


def test_without_a_running_forwarder_the_role_comes_from_the_settings(
    backend: DatabaseWrapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    # manage.py on a replica: no forwarder runs in that process.
    monkeypatch.setenv("FORWARDER_ROLE", "replica")
    monkeypatch.setenv("FORWARDER_SECRET", "s")
    monkeypatch.setenv("FORWARDER_PRIMARY_URL", "http://127.0.0.1:9")
    with pytest.raises(OperationalError, match="readonly"):
        insert(backend)
    with pytest.raises(MigrateOnReplica):
        backend.prepare_database()


def test_an_in_memory_database_outside_a_cluster_is_django_s_own() -> None:
    handler = ConnectionHandler({"default": {"ENGINE": "forwarder.django", "NAME": ":memory:"}})
    wrapper = handler["default"]
    with wrapper.cursor() as cursor:
        cursor.execute("CREATE TABLE t (v TEXT)")
    wrapper.close()


@pytest.mark.anyio
async def test_a_noted_read_only_error_is_raised_to_the_middleware() -> None:
    error = sqlite3.OperationalError("attempt to write a readonly database")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        copy = dict(scope)  # as a framework's router hands it on
        assert note(copy, error)
        assert not note(copy, ValueError("unrelated"))

    with pytest.raises(sqlite3.OperationalError):
        await RaiseNoted(app)({"type": "http"}, None, None)  # type: ignore[arg-type]
    assert not note({"type": "http"}, error)  # no RaiseNoted layer: nothing to note into
