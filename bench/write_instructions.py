"""A direct write in instructions: what one `POST /write` costs the primary's server process.

The primary-cost benchmark (`bench.primary_cost`) measures throughput, which a shared 2-core machine
moves from run to run; the instructions a write runs do not move. Four servers of
`bench/apps/write_app.py` on the nodes' stack (uvicorn, httptools, uvloop) run under
`valgrind --tool=callgrind` with counting off; after a warm-up, counting is on for exactly `requests`
sequential keep-alive POSTs, and the dump's total divided by `requests` is the figure:

- `bare`: the app without forwarder on its own database;
- `litestream`: the same, its database replicated by `litestream replicate` (the dev cluster's
  config): the single-node baseline of the primary-cost target;
- `forwarder`: the app inside `ForwarderMiddleware` as a Litestream primary, as it runs by default.
  At valgrind's pace writes come more than `QUIET_GAP` apart, so this is a quiet primary's write
  (one sync-status each); `/outcomes` says which answers its txids were;
- `forwarder, no txid`: the same answering txid 1 (not correct: what the rest of the middleware costs).

Litestream runs beside each replicated one at full speed, uncounted: only the app's process is.

    .venv/bin/python -m bench.write_instructions [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from bench.read_instructions import app_server, counted_run, send_many
from bench.stats import report
from forwarder.dev.replication import Replicator

COLUMNS = [
    "setup",
    "instructions / write",
    "added over litestream",
    "ratio (litestream / setup)",
    "requests",
]
APP = "bench.apps.write_app:app"
SETUPS = ("bare", "litestream", "forwarder", "forwarder, no txid")


def post_many(port: int, count: int) -> None:
    """`count` POSTs of one row to `/write`, one after another on one keep-alive connection, each answered 201."""
    body = b"a row of the write benchmark"
    request = (
        b"POST /write HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    send_many(port, request, count, b"201", "POST /write")


def count_writes(app_env: dict[str, str], out: Path, requests: int) -> tuple[int, dict[str, Any]]:
    """Instructions per POST of one server under callgrind, and how its txids were found (`/outcomes`)."""
    with app_server(APP, app_env, out, callgrind=True, ready=partial(post_many, count=1)) as (port, pid):
        post_many(port, max(50, requests // 4))  # warm-up: caches, lazy imports, the thread pool
        counted = counted_run(pid, Path(f"{out}.1"), partial(post_many, port, requests))
        outcomes = httpx.get(f"http://127.0.0.1:{port}/outcomes", timeout=60).json()
        return round(counted / requests), outcomes


async def measure(requests: int) -> dict[str, Any]:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("the instruction count needs valgrind: apt-get install valgrind")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        envs: dict[str, dict[str, str]] = {}
        async with AsyncExitStack() as stack:
            for setup in SETUPS:
                base = tmp / setup.replace(", ", "-").replace(" ", "-")
                base.mkdir()
                database = base / "app.db"
                if setup == "bare":
                    envs[setup] = {"BENCH_BARE": "1", "BENCH_DATABASE": str(database)}
                    continue
                replicator = Replicator(database, base / "store", base / "ls.sock", log_path=base / "replicate.log")
                await replicator.start()
                stack.push_async_callback(replicator.stop)
                if setup == "litestream":
                    envs[setup] = {"BENCH_BARE": "1", "BENCH_DATABASE": str(database)}
                    continue
                envs[setup] = {
                    "FORWARDER_ROLE": "primary",
                    "FORWARDER_ENGINE": "litestream",
                    "FORWARDER_DATABASE": str(database),
                    "FORWARDER_LITESTREAM_SOCKET": str(replicator.socket_path),
                    "FORWARDER_NODE_ID": "primary",
                    "FORWARDER_SECRET": "write-instructions-benchmark-secret",
                    "FORWARDER_LOG_LEVEL": "warning",
                    **({} if setup == "forwarder" else {"BENCH_COMMIT": "none"}),
                }
            with ThreadPoolExecutor(len(SETUPS)) as pool:  # each count is the process's own: side by side
                futures = {
                    setup: asyncio.wrap_future(pool.submit(count_writes, env, tmp / f"callgrind-{i}.out", requests))
                    for i, (setup, env) in enumerate(envs.items())
                }
                answers = {setup: await future for setup, future in futures.items()}
    counted = {setup: per_write for setup, (per_write, _) in answers.items()}
    baseline = counted["litestream"]
    rows = [
        {
            "setup": setup,
            "instructions / write": counted[setup],
            "added over litestream": counted[setup] - baseline,
            "ratio (litestream / setup)": round(baseline / counted[setup], 3),
            "requests": requests,
        }
        for setup in SETUPS
    ]
    return {"rows": rows, "requests": requests, "outcomes": answers["forwarder"][1]}


def run(requests: int) -> dict[str, Any]:
    return asyncio.run(measure(requests))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="a direct write's instructions on the primary, with and without forwarder"
    )
    parser.add_argument("--requests", type=int, default=200, help="POSTs counted per server")
    args = parser.parse_args()
    result = run(args.requests)
    report("write_instructions", result, result["rows"], COLUMNS)
    print("forwarder's txids:", result["outcomes"])
