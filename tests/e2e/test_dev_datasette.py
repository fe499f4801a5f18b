"""`forwarder dev --datasette`: the cluster's admin UI from the command line, nothing else."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def test_forwarder_dev_datasette_serves_datasette_on_every_node(tmp_path: Path) -> None:
    data = tmp_path / "dev"
    argv = [sys.executable, "-m", "forwarder.cli", "dev", "--datasette", "--replicas", "1"]
    argv += ["--data-dir", str(data), "--edge-port", "0"]
    log = tmp_path / "dev.log"
    with log.open("wb") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        with anyio.fail_after(90):
            state = data / "cluster.json"
            while not state.exists():
                assert process.poll() is None, log.read_text()
                await anyio.sleep(0.1)
            nodes = json.loads(state.read_text())["nodes"]
            async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
                for node in nodes:
                    page = await client.get(f"{node['url']}/")
                    assert page.status_code == 200, page.text[:300]
                    assert "Datasette" in page.text and page.headers["forwarder-node"] == node["id"]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
