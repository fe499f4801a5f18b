"""Start and stop the uvicorn processes a benchmark loads (not cluster nodes: see local_cluster)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from forwarder.dev.processes import fast_server_options

REPO = Path(__file__).absolute().parent.parent
"""The repository root: benchmark apps are imported from here (`bench.apps.*`)."""


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds process `pid` has used so far (Linux /proc); None once it is gone."""
    try:
        # Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SERVER_PIDS: dict[str, int] = {}
"""The pid of each `uvicorn_server` running now, by the URL it yielded."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def uvicorn_server(app: str, env: Mapping[str, str], ready_path: str, *, like_nodes: bool = False) -> Iterator[str]:
    """Serve `app` ("module:attribute") on a free loopback port; yield its URL once `ready_path` answers.

    `like_nodes`: on the server stack `forwarder dev` runs cluster nodes on (uvloop + httptools), for a
    baseline measured against a node; otherwise uvicorn's own default (httptools when installed),
    as `uvicorn app:app` runs it.
    """
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", app, "--port", str(port), "--no-access-log", "--log-level", "warning"]
    if like_nodes:
        argv += fast_server_options({**os.environ, **env})
    process = subprocess.Popen(argv, env={**os.environ, **env}, cwd=REPO, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url + ready_path, timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{app} did not start on port {port} (exit status {process.poll()})")
            time.sleep(0.05)
        SERVER_PIDS[url] = process.pid
        yield url
    finally:
        SERVER_PIDS.pop(url, None)
        stop_group(process, 10)


def stop_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group `process` leads (started with `start_new_session`), SIGKILL it after `timeout` s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
