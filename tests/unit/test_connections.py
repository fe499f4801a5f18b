"""The database-access rule: read-only URIs for replicas, and when a connection may be reused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from forwarder import ConfigurationError, Role, Txid
from forwarder.connections import AccessRule, Stamp, is_file_database, read_only_uri


def make_db(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (v TEXT)")
        conn.execute("INSERT INTO t VALUES ('x')")
    conn.close()
    return path


@pytest.mark.parametrize("name", ["my app.db", "what?.db", "hash#1.db", "100%.db", "ünï.db"])
def test_read_only_uri_opens_awkward_file_names_read_only(tmp_path: Path, name: str) -> None:
    path = make_db(tmp_path / "a dir" / name)
    uri = read_only_uri(str(path))
    assert uri.startswith("file:/") and uri.endswith("?mode=ro")
    conn = sqlite3.connect(uri, uri=True)
    assert conn.execute("SELECT v FROM t").fetchone() == ("x",)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("INSERT INTO t VALUES ('y')")
    conn.close()
    assert not (tmp_path / "a dir" / "what").exists()  # the `?` was part of the name, not a query


def test_the_users_uri_options_are_kept_and_mode_becomes_ro(tmp_path: Path) -> None:
    path = make_db(tmp_path / "app.db")
    uri = read_only_uri(f"file:{path}?cache=private&mode=rwc&psow=1", uri=True)
    assert uri == f"file:{path}?mode=ro&cache=private&psow=1"
    for given in (f"file://{path}", f"file://localhost{path}", f"file:{path}#fragment"):
        assert read_only_uri(given, uri=True) == f"file:{path}?mode=ro"
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        sqlite3.connect(uri, uri=True).execute("DELETE FROM t")


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_db(tmp_path / "data" / "app.db")
    monkeypatch.chdir(tmp_path)
    assert read_only_uri("data/app.db") == f"file:{tmp_path}/data/app.db?mode=ro"
    assert (
        read_only_uri("file:data/app.db?cache=shared", uri=True) == f"file:{tmp_path}/data/app.db?mode=ro&cache=shared"
    )


def test_a_remote_host_in_a_uri_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="local files only"):
        read_only_uri("file://elsewhere/data/app.db", uri=True)


@pytest.mark.parametrize(
    ("database", "uri"),
    [(":memory:", False), ("", False), ("file::memory:?cache=shared", True), ("file:x.db?mode=memory", True)],
)
def test_in_memory_databases_are_refused(database: str, uri: bool) -> None:
    assert not is_file_database(database, uri=uri)
    with pytest.raises(ConfigurationError, match="cannot be replicated"):
        read_only_uri(database, uri=uri)
    rule = AccessRule(lambda: Role.PRIMARY, lambda: Txid(0))
    with pytest.raises(ConfigurationError, match="FORWARDER_DATABASE"):
        rule.connect_arguments(database, uri=uri)


def test_the_primary_opens_the_database_as_given_and_a_replica_read_only(tmp_path: Path) -> None:
    role = [Role.PRIMARY]
    rule = AccessRule(lambda: role[0], lambda: Txid(0))
    assert rule.connect_arguments("/data/app.db") == ("/data/app.db", False)
    role[0] = Role.REPLICA
    assert rule.connect_arguments("/data/app.db") == ("file:/data/app.db?mode=ro", True)


def test_reuse_never_crosses_a_role_change_nor_a_replicas_position_change() -> None:
    role, position = [Role.REPLICA], [Txid(5)]
    rule = AccessRule(lambda: role[0], lambda: position[0], owner=1)
    replica = rule.stamp()
    assert rule.may_reuse(replica)
    position[0] = Txid(6)
    assert not rule.may_reuse(replica)  # it may still read the snapshot of txid 5
    assert rule.may_reuse(rule.stamp())
    role[0] = Role.PRIMARY
    primary = rule.stamp()
    position[0] = Txid(9)
    assert rule.may_reuse(primary)  # the primary's own connections always see its latest commit
    assert not rule.may_reuse(Stamp(Role.REPLICA, Txid(9), 1))
    role[0] = Role.REPLICA
    assert not rule.may_reuse(primary)
    assert not rule.may_reuse(Stamp(Role.REPLICA, Txid(9), owner=2))  # another forwarder's


def test_connect_gives_a_primary_connection_wal_and_the_pragmas(tmp_path: Path) -> None:
    rule = AccessRule(lambda: Role.PRIMARY, lambda: Txid(3))
    conn, stamp = rule.connect(tmp_path / "new.db")
    assert stamp == Stamp(Role.PRIMARY, Txid(3))
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
    assert conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    conn.close()
