"""The apps `bench.write_instructions` counts, as it runs them: a real uvicorn server as the
Litestream primary (real `litestream replicate`), written to with the benchmark's own POSTs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio.to_thread
import httpx
import pytest

from bench.read_instructions import app_server
from bench.write_instructions import APPS, WriteApp
from forwarder.dev.replication import Replicator

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


@pytest.fixture
async def replicator(tmp_path: Path) -> AsyncIterator[Replicator]:
    started = Replicator(tmp_path / "app.db", tmp_path / "store", tmp_path / "ls.sock", log_path=tmp_path / "r.log")
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


@pytest.mark.parametrize("name", sorted(APPS))
async def test_each_bench_write_app_writes_as_a_forwarder_primary_and_says_how(
    name: str, replicator: Replicator, tmp_path: Path
) -> None:
    app: WriteApp = APPS[name]
    env = {
        **app.wrapped,
        "BENCH_DATABASE": str(replicator.database),
        "BENCH_COMMIT": "busy",
        "FORWARDER_ROLE": "primary",
        "FORWARDER_ENGINE": "litestream",
        "FORWARDER_DATABASE": str(replicator.database),
        "FORWARDER_LITESTREAM_SOCKET": str(replicator.socket_path),
        "FORWARDER_NODE_ID": "primary",
        "FORWARDER_SECRET": "bench-write-apps-test-secret",
        "FORWARDER_LOG_LEVEL": "warning",
    }

    def run() -> tuple[dict[str, object], dict[str, object]]:
        with app_server(app.path, env, tmp_path / "unused", callgrind=False, ready=lambda port: app.post(port, 1)) as (
            port,
            _,
        ):
            before = httpx.get(f"http://127.0.0.1:{port}/outcomes", timeout=10).json()
            app.post(port, 30)  # raises unless each one is answered as the app answers a write
            return before, httpx.get(f"http://127.0.0.1:{port}/outcomes", timeout=10).json()

    with anyio.fail_after(120):
        before, after = await anyio.to_thread.run_sync(run)
    answered = sum(after["outcomes"].values()) - sum(before["outcomes"].values())  # type: ignore[attr-defined]
    assert answered == 30  # each write asked the covering check for its txid, once
    assert after["txid"] > before["txid"] > 0  # type: ignore[operator]
