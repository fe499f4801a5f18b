"""SQLModel and async SQLAlchemy apps on a real 3-node Litestream cluster: every write is read back.

Both apps (tests/e2e/apps/sqlmodel_app.py, async_sqlalchemy_app.py) serve the same resources, so
one set of tests runs on each. A read-back is stale when it does not show the write the client
just made (a created or patched book missing or old, a deleted one still there, a hit count behind).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from forwarder.dev import Cluster

from .conftest import edge_client, running_cluster

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
APPS = ["tests.e2e.apps.sqlmodel_app:app", "tests.e2e.apps.async_sqlalchemy_app:app"]


@pytest.fixture(scope="module", params=APPS, ids=["sqlmodel", "async-sqlalchemy"])
async def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    async with running_cluster(
        app=request.param,
        data_dir=tmp_path_factory.mktemp("sqla"),
        replicas=2,
        app_dir=ROOT,
        env={"FORWARDER_REPLICATION_TIMEOUT": "1"},  # a lagging replica's read goes to the primary after 1 s
    ) as running:
        # Tables are created by the primary at startup; wait until both replicas hold them.
        async with httpx.AsyncClient(timeout=5) as client:
            with anyio.fail_after(30):
                for node in running.replicas:
                    while (await client.get(f"{node.url}/books/")).status_code != 200:
                        await anyio.sleep(0.05)
        yield running


class ReadBacks:
    """Counts read-backs and the stale ones among them, with enough detail to debug a failure."""

    def __init__(self) -> None:
        self.total = 0
        self.stale: list[str] = []

    def check(self, fresh: bool, what: str) -> None:
        self.total += 1
        if not fresh:
            self.stale.append(what)

    def assert_clean(self, at_least: int) -> None:
        assert not self.stale, f"{len(self.stale)} stale of {self.total} read-backs: {self.stale[:10]}"
        assert self.total >= at_least


def ok(response: httpx.Response, status: int = 200) -> httpx.Response:
    assert response.status_code == status, f"{response.request.method} {response.request.url}: {response.text}"
    return response


def token(response: httpx.Response) -> str:
    txid: str | None = response.headers.get("forwarder-txid")
    assert txid, f"{response.request.method} {response.request.url} answered without Forwarder-Txid"
    return txid


async def crud_rounds(
    writer: httpx.AsyncClient, readers: dict[str, httpx.AsyncClient], rounds: int, *, how: str
) -> ReadBacks:
    """Per round: create, patch, delete a book through `writer`; after each, read it back on every reader.

    `how` says what proves the write to a reader: "cookie" (`__txid`) or "header" (`Forwarder-Txid`).
    """
    reads = ReadBacks()

    def proof(response: httpx.Response) -> dict[str, str]:
        txid = token(response)
        if how == "cookie":
            assert writer.cookies.get("__txid") == txid, "the write response set no __txid cookie"
            return {"cookie": f"__txid={txid}"}
        return {"forwarder-txid": txid}

    async def read_back(book_id: int, expected: dict[str, Any] | None, after: str, headers: dict[str, str]) -> None:
        for name, reader in readers.items():
            response = await reader.get(f"/books/{book_id}", headers=headers)
            if expected is None:
                fresh = response.status_code == 404
            else:
                # A 404 here is stale too (the book it was told about is missing); a 5xx is a failure.
                assert response.status_code in (200, 404), f"GET {response.request.url}: {response.text}"
                fresh = response.status_code == 200 and response.json() == expected
            reads.check(fresh, f"{after} {book_id} on {name}: {response.status_code} {response.text[:80]}")

    for i in range(rounds):
        created = ok(await writer.post("/books/", json={"title": f"t{i}", "author": "a", "year": 1900 + i}), 201)
        book = created.json()
        await read_back(book["id"], book, "create", proof(created))
        patched = ok(await writer.patch(f"/books/{book['id']}", json={"title": f"t{i}-v2"}))
        assert patched.json()["title"] == f"t{i}-v2"
        await read_back(book["id"], patched.json(), "patch", proof(patched))
        deleted = ok(await writer.delete(f"/books/{book['id']}"))
        await read_back(book["id"], None, "delete", proof(deleted))
    return reads


def direct(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=15, trust_env=False)


async def test_crud_on_a_replica_is_read_back_with_the_cookie_on_both_replicas(cluster: Cluster) -> None:
    one, other = cluster.replicas
    async with direct(one.url) as writer, direct(one.url) as same, direct(other.url) as far:
        with anyio.fail_after(110):
            reads = await crud_rounds(writer, {one.id: same, other.id: far}, 50, how="cookie")
    reads.assert_clean(at_least=300)


async def test_crud_on_a_replica_is_read_back_with_the_header_token_and_no_cookie(cluster: Cluster) -> None:
    # Needs the client-sent Forwarder-Txid request header to be honoured like the cookie.
    one, other = cluster.replicas
    async with direct(one.url) as writer, direct(one.url) as same, direct(other.url) as far:
        with anyio.fail_after(110):
            reads = await crud_rounds(writer, {one.id: same, other.id: far}, 25, how="header")
    assert not same.cookies and not far.cookies
    reads.assert_clean(at_least=150)


@pytest.mark.parametrize("how", ["cookie", "header"])
async def test_a_lagging_replica_does_not_serve_a_read_older_than_the_proof(cluster: Cluster, how: str) -> None:
    # With the other replica's follower frozen, only the proof (cookie or header token) keeps its
    # read fresh: it waits, then is served by the primary. A proof that is ignored reads stale.
    one, other = cluster.replicas
    cluster.pause_follower(other.id)
    try:
        async with direct(one.url) as writer, direct(other.url) as far:
            with anyio.fail_after(60):
                reads = await crud_rounds(writer, {other.id: far}, 2, how=how)
    finally:
        cluster.resume_follower(other.id)
    reads.assert_clean(at_least=6)


async def test_crud_through_the_edge_is_read_back_in_both_regions(cluster: Cluster) -> None:
    assert cluster.edge_url
    one, other = cluster.replicas

    def edge(region: str) -> httpx.AsyncClient:
        return edge_client(cluster, region)

    async with edge(one.region) as writer, edge(one.region) as same, edge(other.region) as far:
        with anyio.fail_after(110):
            reads = await crud_rounds(writer, {one.region: same, other.region: far}, 20, how="cookie")
        # The read-backs stayed on the replicas (a read sent to the primary would prove nothing).
        served_by = (await same.get("/books/"), await far.get(f"/books/?_region={other.region}"))
        assert [r.headers["forwarder-node"] for r in served_by] == [one.id, other.id]
    reads.assert_clean(at_least=120)


async def test_a_get_that_writes_on_a_replica_runs_on_the_primary_and_is_read_back(cluster: Cluster) -> None:
    # Needs a request forwarded by late discovery to get Forwarder-Txid, the cookie and the wait.
    replica = cluster.replicas[0]
    reads = ReadBacks()
    async with direct(replica.url) as client:
        with anyio.fail_after(110):
            for i in range(50):
                visited = ok(await client.get(f"/pages/p{i % 5}"))
                assert visited.headers["forwarder-node"] == cluster.primary.id, "the write did not run on the primary"
                token(visited)
                listed = ok(await client.get("/pages/"))
                assert listed.headers["forwarder-node"] == replica.id
                hits = {page["slug"]: page["hits"] for page in listed.json()}
                reads.check(hits.get(f"p{i % 5}") == visited.json()["hits"], f"visit {i}: {hits}")
    reads.assert_clean(at_least=50)


def dump(database: Path) -> tuple[str, list[Any]]:
    """`PRAGMA integrity_check` and every row, read on a short-lived read-only connection."""
    with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as conn:
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        books = conn.execute("SELECT id, title, author, year FROM book ORDER BY id").fetchall()
        pages = conn.execute("SELECT slug, hits FROM page ORDER BY slug").fetchall()
    return check, [*books, *pages]


async def test_every_node_is_intact_and_every_replica_holds_the_primarys_content(cluster: Cluster) -> None:
    # Runs after the traffic above (pytest keeps file order within the module's cluster).
    async with direct(cluster.replicas[0].url) as client:
        ok(await client.post("/books/", json={"title": "last", "author": "a"}), 201)
    txid = await cluster.replicator.txid()
    with anyio.fail_after(30):
        for node in cluster.replicas:
            assert node.follower is not None
            while (node.follower.position() or 0) < txid:
                await anyio.sleep(0.02)
    primary_check, primary_rows = dump(cluster.primary.database)
    assert primary_check == "ok"
    assert any(row[1:3] == ("last", "a") for row in primary_rows)
    for node in cluster.replicas:
        check, rows = dump(node.database)
        assert check == "ok", f"{node.id}: {check}"
        assert rows == primary_rows, f"{node.id} differs from the primary"
