"""A replica that starts before its follower has restored, and the log lines of a plain uvicorn node."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from forwarder.dev.processes import ManagedProcess, free_port
from forwarder.dev.replication import Follower

from .conftest import running_cluster

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.e2e.apps.plain_sqlite:app"


async def test_a_replica_app_waits_for_the_first_restore_and_serves_from_the_primary_meanwhile(
    tmp_path: Path,
) -> None:
    async with running_cluster(app=APP, data_dir=tmp_path / "c", replicas=1, app_dir=ROOT) as cluster:
        database = tmp_path / "late" / "app.db"
        database.parent.mkdir()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FORWARDER_")},
            "FORWARDER_NODE_ID": "node-late",
            "FORWARDER_REGION": "syd",
            "FORWARDER_ROLE": "replica",
            "FORWARDER_DATABASE": str(database),
            "FORWARDER_PRIMARY_URL": cluster.primary.url,
            "FORWARDER_PRIMARY_ID": cluster.primary.id,
            "FORWARDER_SECRET": cluster.secret,
            "FORWARDER_PORT": str(port),
        }
        log = tmp_path / "late.log"
        argv = [sys.executable, "-m", "uvicorn", APP, "--port", str(port), "--app-dir", str(ROOT)]
        app = ManagedProcess("node-late", argv, log_path=log, env=env)
        follower = Follower("node-late", database, cluster.store, log_path=tmp_path / "late-litestream.log")
        async with httpx.AsyncClient(timeout=10) as client:
            await app.start()
            try:
                with anyio.fail_after(60):
                    while True:  # serving, and saying why it is not ready
                        try:
                            health = await client.get(f"{url}/_forwarder/health")
                            break
                        except httpx.TransportError:
                            await anyio.sleep(0.05)
                    assert health.status_code == 503
                    assert any(p.startswith("restoring") for p in health.json()["problems"]), health.text
                    visits = await client.get(f"{url}/visits")
                    assert visits.status_code == 200 and visits.headers["forwarder-node"] == cluster.primary.id
                    assert not database.exists(), "the app opened the database before the follower restored it"
                    assert "app started" not in log.read_text()

                    await follower.start()  # fails if an empty file had been left in its way
                    while (await client.get(f"{url}/_forwarder/health")).status_code != 200:
                        await anyio.sleep(0.05)
                    while "app started" not in log.read_text():  # the app's own start-up, now
                        await anyio.sleep(0.05)
                    local = await client.get(f"{url}/visits")
                    assert local.status_code == 200 and local.headers["forwarder-node"] == "node-late"
            finally:
                await app.stop()
                await follower.stop()


async def test_forwarded_requests_are_logged_by_a_plain_uvicorn_node(tmp_path: Path) -> None:
    async with running_cluster(app=APP, data_dir=tmp_path / "c", replicas=1, app_dir=ROOT) as cluster:
        replica = cluster.replicas[0]
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(f"{replica.url}/visits")  # a write: forwarded (405 on the primary)
        assert response.headers["forwarder-forwarded"] == "proxy"
        line = "INFO:     forwarder.middleware: forwarded POST /visits to primary"
        with anyio.fail_after(10):  # the line is written once the response has gone out
            while line not in (cluster.logs_dir / f"{replica.id}.log").read_text():
                await anyio.sleep(0.05)
