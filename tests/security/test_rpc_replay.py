"""Finding 4: a signed RPC call runs at most once, across restarts of the primary and failovers."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.types import Scope

from forwarder import Forwarder, MemoryEngine, MemoryLog, Role, Topology
from forwarder.dev import Cluster
from forwarder.rpc.seen import TABLE, MemorySeenCalls, SQLiteSeenCalls
from forwarder.rpc.signing import sign

from ..unit.asgi import body_of, call, http_scope, status_of
from .harness import SECRET, Ledger, ledger_registry, primary_node

pytestmark = pytest.mark.anyio

PATH = "/_forwarder/rpc/record"
BODY = b'{"args":["x"],"kwargs":{}}'


def _rpc_scope(header: str) -> Scope:
    return http_scope("POST", PATH, [(b"forwarder-signature", header.encode()), (b"content-type", b"application/json")])


async def test_a_captured_call_replayed_after_a_restart_is_refused(tmp_path: Path) -> None:
    ledger = Ledger(MemoryLog(auto_apply=True))
    registry = ledger_registry(ledger)
    header = sign(SECRET.encode(), "POST", PATH, BODY)
    answers = []
    for _ in range(2):  # the same database file, a new process's worth of Forwarder each time
        primary, app = primary_node(ledger, registry, database=tmp_path / "app.db")
        assert isinstance(primary.seen_calls, SQLiteSeenCalls)
        async with primary:
            with anyio.fail_after(5):
                sent = await call(app, _rpc_scope(header), BODY)
        answers.append((status_of(sent), json.loads(body_of(sent)).get("error", {}).get("type")))
    assert answers == [(200, None), (401, "RPCAuthError")]
    assert ledger.calls == ["x"]


async def test_the_id_is_committed_before_the_function_runs(tmp_path: Path) -> None:
    ledger = Ledger(MemoryLog(auto_apply=True))
    registry = ledger_registry(ledger)
    seen_while_running: list[int] = []

    @registry.primary_only(name="look")
    def look() -> None:
        with sqlite3.connect(tmp_path / "app.db") as conn:  # another connection: sees only committed rows
            seen_while_running.append(conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])

    body = b'{"args":[],"kwargs":{}}'
    primary, app = primary_node(ledger, registry, database=tmp_path / "app.db")
    async with primary:
        sent = await call(
            app,
            http_scope(
                "POST",
                "/_forwarder/rpc/look",
                [(b"forwarder-signature", sign(SECRET.encode(), "POST", "/_forwarder/rpc/look", body).encode())],
            ),
            body,
        )
    assert status_of(sent) == 200 and seen_while_running == [1]


async def test_expired_ids_are_pruned(tmp_path: Path) -> None:
    ledger = Ledger(MemoryLog(auto_apply=True))
    primary, _ = primary_node(ledger, ledger_registry(ledger), database=tmp_path / "app.db")
    async with primary:
        seen = primary.seen_calls
        assert await seen.claim("old", 1)  # expired long ago
        assert not await seen.claim("old", 1)
        assert isinstance(seen, SQLiteSeenCalls)
        seen._pruned = 0.0
        assert await seen.claim("new", 2**40)
        with sqlite3.connect(tmp_path / "app.db") as conn:
            assert [r[0] for r in conn.execute(f"SELECT id FROM {TABLE}")] == ["new"]


async def test_without_a_database_ids_are_kept_in_memory() -> None:
    log = MemoryLog()
    forwarder = Forwarder(engine=MemoryEngine(log, Role.PRIMARY), topology=Topology("p", "fra", Role.PRIMARY))
    assert isinstance(forwarder.seen_calls, MemorySeenCalls)
    assert await forwarder.seen_calls.claim("a", 2**40) and not await forwarder.seen_calls.claim("a", 2**40)


# -- against a real cluster -----------------------------------------------------------------------


async def _count(client: httpx.AsyncClient, url: str) -> int:
    return len((await client.get(url + "/api/messages")).json()["messages"])


@pytest.mark.e2e
async def test_a_call_replayed_after_the_primary_restarts_is_refused(real_cluster: Cluster) -> None:
    name = "example_app.board.post_message"
    path = f"/_forwarder/rpc/{name}"
    body = json.dumps({"args": [{"author": "rpc", "text": "once"}], "kwargs": {}}).encode()
    header = sign(real_cluster.secret.encode(), "POST", path, body)
    headers = {"forwarder-signature": header, "content-type": "application/json"}
    primary = real_cluster.primary
    async with httpx.AsyncClient(timeout=10) as client:
        before = await _count(client, primary.url)
        first = await client.post(primary.url + path, content=body, headers=headers)
        assert first.status_code == 200, first.text
        await real_cluster.stop_node(primary.id)
        await real_cluster.start_node(primary.id)
        replay = await client.post(primary.url + path, content=body, headers=headers)
        assert replay.status_code == 401 and "replayed" in replay.json()["error"]["message"]
        assert await _count(client, primary.url) == before + 1
    # The id is in the replicated database: a replica promoted after a failover would refuse it too.
    request_id = header.split("id=")[1].split(",")[0]
    replica_db = real_cluster.replicas[0].database
    with anyio.fail_after(15):
        while True:
            try:
                with sqlite3.connect(f"{replica_db.as_uri()}?mode=ro", uri=True) as conn:
                    if conn.execute(f"SELECT 1 FROM {TABLE} WHERE id = ?", (request_id,)).fetchone():
                        break
            except sqlite3.Error:
                pass  # restored file not complete yet
            await anyio.sleep(0.1)
