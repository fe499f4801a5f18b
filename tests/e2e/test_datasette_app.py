"""Datasette with the forwarder plugin on a real 3-node Litestream cluster.

The app (tests/e2e/apps/datasette_app.py) has stored write queries (the browser flow: the form
page on a replica, then a POST with the form's csrftoken) and the JSON write API (an API client
with a token and no cookies, proving its writes with the Forwarder-Txid header). Every write is
made through a replica and read back on it and on the other replica.
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

from forwarder.datasette import cluster_secret
from forwarder.dev import Cluster
from forwarder.dev.processes import free_port

from .conftest import edge_client, running_cluster
from .test_sqlalchemy_apps import ReadBacks, direct, ok, token

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def datasette_cluster_at(data_dir: Path) -> AsyncIterator[Cluster]:
    """The Datasette app on a 3-node cluster, once every node holds the tables."""
    async with running_cluster(
        app="tests.e2e.apps.datasette_app:app",
        data_dir=data_dir,
        replicas=2,
        app_dir=ROOT,
        env={"FORWARDER_REPLICATION_TIMEOUT": "2"},
    ) as running:
        # The primary creates the tables at start-up; wait until both replicas hold them.
        async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
            with anyio.fail_after(30):
                for node in [running.primary, *running.replicas]:
                    while (await client.get(f"{node.url}/app/notes.json")).status_code != 200:
                        await anyio.sleep(0.05)
        yield running


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    async with datasette_cluster_at(tmp_path_factory.mktemp("datasette")) as running:
        yield running


async def api_token(cluster: Cluster) -> str:
    """A token for the `api` actor, signed with the secret every node derives from FORWARDER_SECRET."""
    from datasette.app import Datasette

    ds = Datasette(secret=cluster_secret(cluster.secret))
    await ds.invoke_startup()
    token: str = await ds.create_token("api")
    ds.close()
    return token


CSRF = re.compile(r'name="csrftoken" value="([^"]+)"')


async def run_query(client: httpx.AsyncClient, name: str, **params: str) -> httpx.Response:
    """The browser flow: load the stored query's form page, then post it with the page's csrftoken."""
    page = ok(await client.get(f"/app/{name}"))
    assert page.headers["forwarder-node"] != "", page.text
    found = CSRF.search(page.text)
    data = {**params, **({"csrftoken": found.group(1)} if found else {})}
    # Chromium sends these on a same-origin form post; Datasette's CSRF check reads them.
    headers = {"sec-fetch-site": "same-origin", "origin": str(client.base_url).rstrip("/")}
    posted = await client.post(f"/app/{name}", data=data, headers=headers)
    assert posted.status_code == 302, f"POST /app/{name}: {posted.status_code} {posted.text[:300]}"
    return posted


async def notes(reader: httpx.AsyncClient, headers: dict[str, str] | None = None) -> dict[int, str]:
    response = ok(await reader.get("/app/notes.json?_shape=array&_size=max", headers=headers or {}))
    return {row["id"]: row["body"] for row in response.json()}


async def test_stored_write_queries_from_replica_forms_are_read_back_on_both_replicas(cluster: Cluster) -> None:
    one, other = cluster.replicas
    reads = ReadBacks()
    async with direct(one.url) as browser, direct(other.url) as far:
        with anyio.fail_after(110):
            for i in range(50):
                body = f"note {i}"
                posted = await run_query(browser, "add_note", body=body)
                far.cookies.set("__txid", token(posted))
                followed = ok(await browser.get(posted.headers["location"]))
                assert "Note added" in followed.text  # Datasette's message, signed on the primary
                mine = await notes(browser)
                note_id = max((k for k, v in mine.items() if v == body), default=-1)
                reads.check(note_id != -1, f"add {i} on {one.id}")
                reads.check(body in (await notes(far)).values(), f"add {i} on {other.id}")

                posted = await run_query(browser, "edit_note", id=str(note_id), body=f"{body} v2")
                far.cookies.set("__txid", token(posted))
                reads.check((await notes(browser)).get(note_id) == f"{body} v2", f"edit {i} on {one.id}")
                reads.check((await notes(far)).get(note_id) == f"{body} v2", f"edit {i} on {other.id}")

                posted = await run_query(browser, "remove_note", id=str(note_id))
                far.cookies.set("__txid", token(posted))
                reads.check(note_id not in await notes(browser), f"remove {i} on {one.id}")
                reads.check(note_id not in await notes(far), f"remove {i} on {other.id}")
    reads.assert_clean(at_least=300)


async def test_the_json_write_api_with_a_token_and_no_cookies_is_read_back_on_both_replicas(cluster: Cluster) -> None:
    one, other = cluster.replicas
    bearer = {"authorization": f"Bearer {await api_token(cluster)}"}
    reads = ReadBacks()

    def cookieless(url: str) -> httpx.AsyncClient:
        async def forget(response: httpx.Response) -> None:
            client.cookies.clear()

        client = httpx.AsyncClient(base_url=url, timeout=15, trust_env=False, event_hooks={"response": [forget]})
        return client

    async with cookieless(one.url) as api, cookieless(one.url) as same, cookieless(other.url) as far:
        with anyio.fail_after(110):
            for i in range(50):
                created = ok(
                    await api.post("/app/notes/-/insert", json={"row": {"body": f"api {i}"}}, headers=bearer), 201
                )
                row = created.json()["rows"][0]
                proof = {"forwarder-txid": token(created)}
                for name, reader in ((one.id, same), (other.id, far)):
                    reads.check((await notes(reader, proof)).get(row["id"]) == f"api {i}", f"insert {i} on {name}")
                updated = ok(
                    await api.post(
                        f"/app/notes/{row['id']}/-/update", json={"update": {"body": f"api {i} v2"}}, headers=bearer
                    )
                )
                proof = {"forwarder-txid": token(updated)}
                for name, reader in ((one.id, same), (other.id, far)):
                    reads.check((await notes(reader, proof)).get(row["id"]) == f"api {i} v2", f"update {i} on {name}")
                deleted = ok(await api.post(f"/app/notes/{row['id']}/-/delete", headers=bearer))
                proof = {"forwarder-txid": token(deleted)}
                for name, reader in ((one.id, same), (other.id, far)):
                    reads.check(row["id"] not in await notes(reader, proof), f"delete {i} on {name}")
            assert not api.cookies and not same.cookies and not far.cookies
    reads.assert_clean(at_least=300)


async def test_a_plugin_write_on_a_get_runs_on_the_primary_and_is_read_back(cluster: Cluster) -> None:
    replica = cluster.replicas[0]
    reads = ReadBacks()
    async with direct(replica.url) as client:
        with anyio.fail_after(110):
            for i in range(50):
                visited = ok(await client.get(f"/-/visit/p{i % 5}"))
                assert visited.headers["forwarder-node"] == cluster.primary.id, "the write did not run on the primary"
                token(visited)
                listed = ok(await client.get("/app/visits.json?_shape=array"))
                assert listed.headers["forwarder-node"] == replica.id
                hits = {row["slug"]: row["hits"] for row in listed.json()}
                reads.check(hits.get(f"p{i % 5}") == visited.json()["hits"], f"visit {i}: {hits}")
    reads.assert_clean(at_least=50)


async def test_stored_write_queries_through_the_edge(cluster: Cluster) -> None:
    assert cluster.edge_url
    one, other = cluster.replicas
    reads = ReadBacks()

    def edge(region: str) -> httpx.AsyncClient:
        return edge_client(cluster, region)

    async with edge(one.region) as browser, edge(other.region) as far:
        with anyio.fail_after(110):
            for i in range(20):
                posted = await run_query(browser, "add_note", body=f"edge {i}")
                far.cookies.set("__txid", token(posted))
                reads.check(f"edge {i}" in (await notes(browser)).values(), f"edge add {i} in {one.region}")
                reads.check(f"edge {i}" in (await notes(far)).values(), f"edge add {i} in {other.region}")
            served = [await browser.get("/app/notes.json"), await far.get("/app/notes.json")]
            assert [r.headers["forwarder-node"] for r in served] == [one.id, other.id]
    reads.assert_clean(at_least=40)


async def test_datasette_serve_on_a_replica_with_only_the_forwarder_environment(cluster: Cluster) -> None:
    # A second app process on replica 2's file: plain `datasette serve`, the plugin, FORWARDER_*.
    replica = cluster.replicas[1]
    port = free_port()
    env = {
        **os.environ,
        "FORWARDER_ROLE": "replica",
        "FORWARDER_ENGINE": "litestream",
        "FORWARDER_DATABASE": str(replica.database),
        "FORWARDER_SECRET": cluster.secret,
        "FORWARDER_PRIMARY_URL": cluster.primary.url,
        "FORWARDER_PRIMARY_ID": cluster.primary.id,
        "FORWARDER_NODE_ID": f"{replica.id}-serve",
        "FORWARDER_LITESTREAM_SOCKET": str(cluster.socket_path),
    }
    env.pop("DATASETTE_SECRET", None)
    argv = [sys.executable, "-m", "datasette", "serve", "--port", str(port), "--host", "127.0.0.1"]
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        try:
            async with direct(f"http://127.0.0.1:{port}") as client:
                with anyio.fail_after(60):
                    while True:
                        try:
                            if (await client.get("/_forwarder/health")).status_code == 200:
                                break
                        except httpx.TransportError:
                            pass
                        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
                        await anyio.sleep(0.1)
                    # A token signed by the cluster app's secret is good here: the same derived secret.
                    bearer = {"authorization": f"Bearer {await api_token(cluster)}"}
                    created = ok(
                        await client.post("/app/notes/-/insert", json={"row": {"body": "served"}}, headers=bearer), 201
                    )
                    assert created.headers["forwarder-node"] == cluster.primary.id
                    listed = await notes(client, {"forwarder-txid": token(created)})
                    assert "served" in listed.values()
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def dump(database: Path) -> tuple[str, list[Any]]:
    with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as conn:
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        rows = conn.execute("SELECT id, body FROM notes ORDER BY id").fetchall()
        visits = conn.execute("SELECT slug, hits FROM visits ORDER BY slug").fetchall()
    return check, [*rows, *visits]


async def test_every_node_is_intact_and_every_replica_holds_the_primarys_content(cluster: Cluster) -> None:
    txid = await cluster.replicator.txid()
    with anyio.fail_after(30):
        for node in cluster.replicas:
            assert node.follower is not None
            while (node.follower.position() or 0) < txid:
                await anyio.sleep(0.02)
    primary_check, primary_rows = dump(cluster.primary.database)
    assert primary_check == "ok"
    assert primary_rows
    for node in cluster.replicas:
        check, rows = dump(node.database)
        assert check == "ok", f"{node.id}: {check}"
        assert rows == primary_rows, f"{node.id} differs from the primary"
