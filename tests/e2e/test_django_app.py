"""A Django ASGI project (tests/e2e/apps/django_site) on a real 3-node Litestream cluster.

`manage.py migrate` runs on the primary once the cluster is up, as a user runs it (on the node
that holds the writable file); the replicas get the schema by replication. Books are created,
edited and deleted through a replica's ModelForm pages with Django's CSRF, and read back on
both replicas; the admin is used through a replica with a database-backed session.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from forwarder.dev import Cluster

from .conftest import edge_client, running_cluster
from .test_sqlalchemy_apps import ReadBacks, direct, ok, token

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

SITE = Path(__file__).resolve().parent / "apps" / "django_site"
SECRET_KEY = "django-test-key-shared-by-every-node"


def manage(cluster: Cluster, node_index: int, *args: str) -> subprocess.CompletedProcess[str]:
    """`python manage.py ...` with node `node_index`'s FORWARDER_* environment."""
    node = cluster.nodes[node_index]
    env = {
        **os.environ,
        "DJANGO_SECRET_KEY": SECRET_KEY,
        "FORWARDER_ROLE": node.role,
        "FORWARDER_ENGINE": "litestream",
        "FORWARDER_DATABASE": str(node.database),
        "FORWARDER_SECRET": cluster.secret,
        "FORWARDER_LITESTREAM_SOCKET": str(cluster.socket_path),
    }
    if node.role == "replica":
        env["FORWARDER_PRIMARY_URL"] = cluster.primary.url
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=SITE, env=env, capture_output=True, text=True, timeout=60
    )


@asynccontextmanager
async def django_site_cluster(data_dir: Path, username: str, password: str) -> AsyncIterator[Cluster]:
    """The Django site on a 3-node cluster, migrated on the primary, with a superuser."""
    async with running_cluster(
        app="bookshop.asgi:application",
        data_dir=data_dir,
        replicas=2,
        app_dir=SITE,
        env={"FORWARDER_REPLICATION_TIMEOUT": "2", "DJANGO_SECRET_KEY": SECRET_KEY},
    ) as running:
        migrated = await anyio.to_thread.run_sync(lambda: manage(running, 0, "migrate", "--no-input"))
        assert migrated.returncode == 0, migrated.stderr
        os.environ["DJANGO_SUPERUSER_PASSWORD"] = password
        try:
            made = await anyio.to_thread.run_sync(
                lambda: manage(
                    running, 0, "createsuperuser", "--no-input", "--username", username, "--email", "admin@example.com"
                )
            )
        finally:
            os.environ.pop("DJANGO_SUPERUSER_PASSWORD", None)
        assert made.returncode == 0, made.stderr
        async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
            with anyio.fail_after(30):
                for node in running.replicas:
                    while (await client.get(f"{node.url}/books/")).status_code != 200:
                        await anyio.sleep(0.05)
        yield running


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    async with django_site_cluster(tmp_path_factory.mktemp("django"), "admin", "s3cret-pass") as running:
        yield running


CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


async def submit(client: httpx.AsyncClient, path: str, **fields: str) -> httpx.Response:
    """Load a form page, post it with its CSRF token (as a browser does), and return the redirect."""
    page = ok(await client.get(path))
    found = CSRF.search(page.text)
    assert found, f"no CSRF token on {path}"
    headers = {"origin": str(client.base_url).rstrip("/"), "referer": str(page.url)}
    posted = await client.post(path, data={**fields, "csrfmiddlewaretoken": found.group(1)}, headers=headers)
    assert posted.status_code == 302, f"POST {path}: {posted.status_code} {posted.text[:300]}"
    return posted


def field(html: str, name: str) -> str | None:
    found = re.search(rf'<dd id="{name}">([^<]*)</dd>', html)
    return found.group(1) if found else None


async def crud_rounds(writer: httpx.AsyncClient, readers: dict[str, httpx.AsyncClient], rounds: int) -> ReadBacks:
    reads = ReadBacks()

    async def read_back(book_id: int, title: str | None, after: str, txid: str) -> None:
        for name, reader in readers.items():
            if reader is not writer:
                reader.cookies.set("__txid", txid)
            response = await reader.get(f"/books/{book_id}/")
            assert response.status_code in (200, 404), f"GET {response.request.url}: {response.status_code}"
            fresh = response.status_code == 404 if title is None else field(response.text, "title") == title
            reads.check(fresh, f"{after} {book_id} on {name}: {response.status_code}")

    for i in range(rounds):
        created = await submit(writer, "/books/new/", title=f"t{i}", author="a", year=str(1900 + i))
        book_id = int(re.search(r"/books/(\d+)/", created.headers["location"]).group(1))  # type: ignore[union-attr]
        shown = ok(await writer.get(created.headers["location"]))
        assert f"Added t{i}" in shown.text  # the messages framework, across the forward
        await read_back(book_id, f"t{i}", "create", token(created))
        edited = await submit(writer, f"/books/{book_id}/edit/", title=f"t{i}-v2", author="a", year="")
        await read_back(book_id, f"t{i}-v2", "edit", token(edited))
        deleted = await submit(writer, f"/books/{book_id}/delete/")
        await read_back(book_id, None, "delete", token(deleted))
    return reads


async def test_modelform_crud_on_a_replica_is_read_back_on_both_replicas(cluster: Cluster) -> None:
    one, other = cluster.replicas
    async with direct(one.url) as writer, direct(other.url) as far:
        with anyio.fail_after(115):
            reads = await crud_rounds(writer, {one.id: writer, other.id: far}, 50)
    reads.assert_clean(at_least=300)


async def test_modelform_crud_through_the_edge(cluster: Cluster) -> None:
    assert cluster.edge_url
    one, other = cluster.replicas

    def edge(region: str) -> httpx.AsyncClient:
        return edge_client(cluster, region)

    async with edge(one.region) as writer, edge(other.region) as far:
        with anyio.fail_after(110):
            reads = await crud_rounds(writer, {one.region: writer, other.region: far}, 15)
        served = [await writer.get("/books/"), await far.get("/books/")]
        assert [r.headers["forwarder-node"] for r in served] == [one.id, other.id]
    reads.assert_clean(at_least=90)


async def test_admin_login_and_change_on_a_replica(cluster: Cluster) -> None:
    replica, other = cluster.replicas
    async with direct(replica.url) as admin, direct(other.url) as far:
        with anyio.fail_after(60):
            created = await submit(admin, "/books/new/", title="Dune", author="Herbert", year="1965")
            book_id = int(re.search(r"/books/(\d+)/", created.headers["location"]).group(1))  # type: ignore[union-attr]
            logged_in = await submit(
                admin, "/admin/login/?next=/admin/", username="admin", password="s3cret-pass", next="/admin/"
            )
            assert logged_in.headers["location"] == "/admin/"
            home = ok(await admin.get("/admin/"))  # the session row, written on the primary, read here
            assert home.headers["forwarder-node"] == replica.id and "Log out" in home.text
            changed = await submit(
                admin, f"/admin/shelf/book/{book_id}/change/", title="Dune Messiah", author="Herbert", year="1969"
            )
            listing = ok(await admin.get(changed.headers["location"]))
            assert "Dune Messiah" in listing.text and "was changed successfully" in listing.text
            far.cookies.set("__txid", token(changed))
            assert field(ok(await far.get(f"/books/{book_id}/")).text, "title") == "Dune Messiah"


async def test_a_view_that_writes_on_a_get_runs_on_the_primary_and_is_read_back(cluster: Cluster) -> None:
    replica = cluster.replicas[0]
    reads = ReadBacks()
    async with direct(replica.url) as client:
        with anyio.fail_after(110):
            for i in range(50):
                visited = ok(await client.get(f"/pages/p{i % 5}/"))
                assert visited.headers["forwarder-node"] == cluster.primary.id, "the write did not run on the primary"
                token(visited)
                hits = re.search(r'data-hits="(\d+)"', visited.text).group(1)  # type: ignore[union-attr]
                listed = ok(await client.get("/pages/"))
                assert listed.headers["forwarder-node"] == replica.id
                shown = re.search(rf'data-slug="p{i % 5}" data-hits="(\d+)"', listed.text)
                reads.check(shown is not None and shown.group(1) == hits, f"visit {i}")
    reads.assert_clean(at_least=50)


async def test_migrate_on_a_replica_is_refused_with_the_fix(cluster: Cluster) -> None:
    refused = await anyio.to_thread.run_sync(lambda: manage(cluster, 1, "migrate", "--no-input"))
    assert refused.returncode == 1
    assert "this node is a replica" in refused.stderr and "Run `manage.py migrate` on the primary" in refused.stderr
    assert "Traceback" not in refused.stderr


def dump(database: Path) -> tuple[str, list[Any]]:
    with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as conn:
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        rows: list[Any] = []
        for table in ("shelf_book", "shelf_page", "django_session", "auth_user", "django_migrations"):
            rows += conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
    return check, rows


async def test_every_node_is_intact_and_every_replica_holds_the_primarys_content(cluster: Cluster) -> None:
    txid = await cluster.replicator.txid()
    with anyio.fail_after(30):
        for node in cluster.replicas:
            assert node.follower is not None
            while (node.follower.position() or 0) < txid:
                await anyio.sleep(0.02)
    primary_check, primary_rows = dump(cluster.primary.database)
    assert primary_check == "ok" and primary_rows
    for node in cluster.replicas:
        check, rows = dump(node.database)
        assert check == "ok", f"{node.id}: {check}"
        assert rows == primary_rows, f"{node.id} differs from the primary"
