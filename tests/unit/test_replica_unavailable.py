"""A replica read never fails because the copy is locked or missing: the primary answers it instead.

Real SQLite files: the replica's file is locked by another process (as a follower frozen in the
middle of an apply leaves it), or missing (a restore), and the read must still answer 200, within
the replica busy timeout plus one forward.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from forwarder import Forwarder, ForwarderMiddleware, MemoryEngine, MemoryLog, Role, Topology
from forwarder.connections import AccessRule
from forwarder.middleware.discovery import replica_unavailable
from forwarder.policy import RoutingPolicy
from forwarder.txid import Txid

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("over_http_and_channel")]

SECRET = "test-secret"
BUSY = 0.1


def make_database(path: Path, rows: int) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE t (x)")
        db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(rows)])
        db.commit()


def app(forwarder_of: list[Forwarder]) -> Starlette:
    def count(request: Request) -> Response:
        database = forwarder_of[0].database
        assert database is not None
        with database.read() as conn:
            (n,) = conn.execute("SELECT count(*) FROM t").fetchone()
        return JSONResponse({"rows": n})

    return Starlette(routes=[Route("/count", count)])


@asynccontextmanager
async def nodes(tmp_path: Path, replica_file: Path, *, on_lag: str = "forward") -> AsyncIterator[httpx.AsyncClient]:
    """A primary whose file has 3 rows and a replica on `replica_file`; a client of the replica."""
    primary_file = tmp_path / "primary.db"
    make_database(primary_file, 3)
    log = MemoryLog()
    policy = RoutingPolicy(on_lag=on_lag)  # type: ignore[arg-type]
    primary_ref: list[Forwarder] = []
    primary = Forwarder(
        engine=MemoryEngine(log, Role.PRIMARY),
        topology=Topology("node-p", "fra", Role.PRIMARY, primary_id="node-p"),
        secret=SECRET,
        database=str(primary_file),
        policy=policy,
    )
    primary_ref.append(primary)
    primary_app = ForwarderMiddleware(app(primary_ref), forwarder=primary)
    replica_ref: list[Forwarder] = []
    replica = Forwarder(
        engine=MemoryEngine(log, Role.REPLICA, primary_id="node-p"),
        topology=Topology("node-r", "ams", Role.REPLICA, primary_url="http://primary", primary_id="node-p"),
        secret=SECRET,
        database=str(replica_file),
        replica_busy_timeout=BUSY,
        policy=policy,
        transport=httpx.ASGITransport(app=primary_app),
    )
    replica_ref.append(replica)
    replica_app = ForwarderMiddleware(app(replica_ref), forwarder=replica)
    async with primary, replica:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=replica_app), base_url="http://t") as client:
            yield client


@pytest.fixture
def locked_file(tmp_path: Path) -> Iterator[Path]:
    """A replica file with 1 row, exclusively locked by another process (like a follower frozen mid-apply)."""
    path = tmp_path / "replica.db"
    make_database(path, 1)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "db.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
            str(path),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        yield path
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


@pytest.mark.parametrize("on_lag", ["forward", "stale", "error"])
async def test_a_read_on_a_locked_copy_is_answered_by_the_primary_within_the_bound(
    tmp_path: Path, locked_file: Path, on_lag: str
) -> None:
    async with nodes(tmp_path, locked_file, on_lag=on_lag) as client:
        started = time.perf_counter()
        response = await client.get("/count")
        elapsed = time.perf_counter() - started
        metrics = (await client.get("/_forwarder/metrics")).text
    assert response.status_code == 200, response.text
    assert response.json() == {"rows": 3}  # the primary's file, not the locked one
    assert response.headers["forwarder-forwarded"] == "proxy"
    assert "forwarder-txid" not in response.headers  # a read on the primary, not a write
    assert BUSY <= elapsed < BUSY + 1.0
    assert 'forwarder_forwarded_requests_total{mode="proxy",reason="unavailable"} 1.0' in metrics


async def test_an_unlocked_copy_is_read_locally(tmp_path: Path) -> None:
    replica_file = tmp_path / "replica.db"
    make_database(replica_file, 1)
    async with nodes(tmp_path, replica_file) as client:
        response = await client.get("/count")
    assert response.json() == {"rows": 1}
    assert "forwarder-forwarded" not in response.headers


async def test_a_missing_copy_is_answered_by_the_primary(tmp_path: Path) -> None:
    async with nodes(tmp_path, tmp_path / "gone" / "replica.db") as client:
        response = await client.get("/count")
    assert response.status_code == 200 and response.json() == {"rows": 3}


async def test_the_lock_is_waited_for_only_as_long_as_the_bound(tmp_path: Path, locked_file: Path) -> None:
    rule = AccessRule(lambda: Role.REPLICA, lambda: Txid(0), replica_busy_timeout=0.05)
    conn, _ = rule.connect(locked_file, timeout=30)
    started = time.perf_counter()
    with closing(conn), pytest.raises(sqlite3.OperationalError) as raised:
        conn.execute("SELECT count(*) FROM t").fetchone()
    assert time.perf_counter() - started < 1.0  # not the 30 s asked for: replicas get the bound
    assert replica_unavailable(raised.value, restoring=False) == "unavailable"


def test_only_unavailability_errors_count() -> None:
    wrapped = RuntimeError("wrapper")
    wrapped.__cause__ = sqlite3.OperationalError("database is locked")
    assert replica_unavailable(wrapped, restoring=False) == "unavailable"
    assert replica_unavailable(sqlite3.OperationalError("unable to open database file"), restoring=False)
    assert replica_unavailable(sqlite3.OperationalError("no such table: t"), restoring=False) is None
    assert replica_unavailable(sqlite3.OperationalError("no such table: t"), restoring=True) == "unavailable"
    assert replica_unavailable(sqlite3.OperationalError('near "x": syntax error'), restoring=False) is None
    assert replica_unavailable(ValueError("database is locked"), restoring=False) is None


async def test_a_slow_lock_holder_released_within_the_bound_is_read_locally(tmp_path: Path) -> None:
    replica_file = tmp_path / "replica.db"
    make_database(replica_file, 1)
    holder = sqlite3.connect(replica_file, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    async with nodes(tmp_path, replica_file) as client:
        async with anyio.create_task_group() as tg:

            async def release() -> None:
                await anyio.sleep(BUSY / 4)
                holder.execute("COMMIT")

            tg.start_soon(release)
            response = await client.get("/count")
    holder.close()
    assert response.json() == {"rows": 1}
    assert "forwarder-forwarded" not in response.headers
