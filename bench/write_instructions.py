"""A direct write in instructions: what one `POST /write` costs the primary's server process.

The primary-cost benchmark (`bench.primary_cost`) measures throughput, which a shared 2-core machine
moves from run to run; the instructions a write runs do not move. Five servers of
`bench/apps/write_app.py` (or, with `--app sqlmodel`, of SQLModel's tutorial app,
`bench/apps/sqlmodel_app.py`: what a user's write costs) on the nodes' stack (uvicorn, httptools, uvloop) run under
`valgrind --tool=callgrind` with counting off; after a warm-up, counting is on for exactly `requests`
sequential keep-alive POSTs, and the dump's total divided by `requests` is the figure:

- `bare`: the app without forwarder on its own database;
- `litestream`: the same, its database replicated by `litestream replicate` (the dev cluster's
  config): the single-node baseline of the primary-cost target;
- `forwarder`: the app inside `ForwarderMiddleware` as a Litestream primary, as it runs by default.
  At valgrind's pace writes come more than `QUIET_GAP` apart, so this is a quiet primary's write
  (one sync-status each); `/outcomes` says which answers its txids were;
- `forwarder, busy`: the same as a primary whose writes keep coming answers them: the txid from
  local files (`newest + 2`, or the newest), the keeper idle (`BENCH_COMMIT=busy`), and Litestream
  syncing at valgrind's pace (`valgrind_pace`), so that writes share an LTX as under load;
- `forwarder, no txid`: the same answering txid 1 (not correct: what the rest of the middleware costs).

Litestream runs beside each replicated one at full speed, uncounted: only the app's process is.

    .venv/bin/python -m bench.write_instructions [--requests 200] [--app sqlmodel] [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import httpx

from bench.read_instructions import app_server, counted_run, send_many
from bench.stats import report
from forwarder.dev.replication import Replicator
from forwarder.engines.litestream_config import FILE_INTERVALS, Intervals

COLUMNS = [
    "setup",
    "instructions / write",
    "added over litestream",
    "ratio (litestream / setup)",
    "requests",
]
COMMIT = {"forwarder": None, "forwarder, busy": "busy", "forwarder, no txid": "none"}
"""`BENCH_COMMIT` of each forwarder setup (`bench/apps/write_app.py`); None: as it runs by default."""
SETUPS = ("bare", "litestream", *COMMIT)


def valgrind_pace(slowdown: float) -> Intervals:
    """The dev cluster's file-store intervals `slowdown` times longer: the busy primary's Litestream at
    the pace of an app that valgrind slows that much. At 10 ms Litestream would make an LTX of every
    write there, whose header the next write reads; at full speed writes share one (about 30 of the
    minimal app's at 3,000 writes/s)."""
    base = FILE_INTERVALS
    return Intervals(
        monitor=base.monitor * slowdown,
        sync=base.sync * slowdown,
        follow=base.follow * slowdown,
        l0_retention=base.l0_retention * slowdown,
        compaction=base.compaction * slowdown,
        snapshot=base.snapshot * slowdown,
    )


def post_request(target: bytes, content_type: bytes, body: bytes) -> bytes:
    """One keep-alive `POST target` with `body`, as bytes on the wire."""
    head = b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
    return head % (target, content_type, len(body)) + body


def post_many(port: int, count: int) -> None:
    """`count` POSTs of one row to `/write`, one after another on one keep-alive connection, each answered 201."""
    request = post_request(b"/write", b"text/plain", b"a row of the write benchmark")
    send_many(port, request, count, b"201", "POST /write")


def post_books(port: int, count: int) -> None:
    """`count` POSTs of one book to the SQLModel app's `/books/`, as JSON, each answered 200 (FastAPI's default)."""
    book = b'{"title": "A book of the write benchmark", "author": "bench"}'
    send_many(port, post_request(b"/books/", b"application/json", book), count, b"200", "POST /books/")


class WriteApp(NamedTuple):
    """A bench app that writes: its ASGI path, the environment of its bare and of its forwarder setups,
    its POSTs, and how much slower than at full speed its writes come under valgrind (`valgrind_pace`)."""

    path: str
    bare: dict[str, str]
    wrapped: dict[str, str]
    post: Callable[[int, int], None]
    slowdown: float


APPS = {
    "write": WriteApp("bench.apps.write_app:app", {"BENCH_BARE": "1"}, {}, post_many, 30),
    "sqlmodel": WriteApp(
        "bench.apps.sqlmodel_app:app",
        {"BENCH_WRAPPED": "0"},
        {"BENCH_WRAPPED": "1", "BENCH_ROLE": "primary"},
        post_books,
        150,
    ),
}
"""`write`: the minimal app of the primary-cost target; `sqlmodel`: SQLModel's tutorial app (FastAPI,
a session per request), what a user's write looks like."""


def count_writes(
    app: WriteApp, app_env: dict[str, str], out: Path, requests: int, keep: Path | None = None
) -> tuple[int, dict[str, Any]]:
    """Instructions per POST of one server under callgrind, and how its txids were found (`/outcomes`);
    the dump copied to `keep` if given (for `callgrind_annotate`)."""
    with app_server(app.path, app_env, out, callgrind=True, ready=lambda port: app.post(port, 1)) as (port, pid):
        app.post(port, max(50, requests // 4))  # warm-up: caches, lazy imports, the thread pool
        before = httpx.get(f"http://127.0.0.1:{port}/outcomes", timeout=60).json()
        counted = counted_run(pid, Path(f"{out}.1"), partial(app.post, port, requests))
        after = httpx.get(f"http://127.0.0.1:{port}/outcomes", timeout=60).json()
        outcomes = {
            "outcomes": {k: n - before["outcomes"].get(k, 0) for k, n in after["outcomes"].items()},
            "keeper writes": after["keeper writes"] - before["keeper writes"],
            "writes per txid": round(requests / max(1, after["txid"] - before["txid"]), 1),
        }
        if keep is not None:
            shutil.copy(f"{out}.1", keep)
        return round(counted / requests), outcomes


async def measure(requests: int, keep: Path | None = None, app: WriteApp = APPS["write"]) -> dict[str, Any]:
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
                    envs[setup] = {**app.bare, "BENCH_DATABASE": str(database)}
                    continue
                replicator = Replicator(
                    database,
                    base / "store",
                    base / "ls.sock",
                    log_path=base / "replicate.log",
                    intervals=valgrind_pace(app.slowdown) if setup == "forwarder, busy" else None,
                )
                await replicator.start()
                stack.push_async_callback(replicator.stop)
                if setup == "litestream":
                    envs[setup] = {**app.bare, "BENCH_DATABASE": str(database)}
                    continue
                envs[setup] = {
                    **app.wrapped,
                    "BENCH_DATABASE": str(database),
                    "FORWARDER_ROLE": "primary",
                    "FORWARDER_ENGINE": "litestream",
                    "FORWARDER_DATABASE": str(database),
                    "FORWARDER_LITESTREAM_SOCKET": str(replicator.socket_path),
                    "FORWARDER_NODE_ID": "primary",
                    "FORWARDER_SECRET": "write-instructions-benchmark-secret",
                    "FORWARDER_LOG_LEVEL": "warning",
                }
                commit = COMMIT[setup]
                if commit is not None:
                    envs[setup]["BENCH_COMMIT"] = commit
            with ThreadPoolExecutor(len(SETUPS)) as pool:  # each count is the process's own: side by side
                futures = {
                    setup: asyncio.wrap_future(
                        pool.submit(count_writes, app, env, tmp / f"callgrind-{i}.out", requests, _kept(keep, setup))
                    )
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
    return {"rows": rows, "requests": requests, "outcomes": {setup: answers[setup][1] for setup in COMMIT}}


def _kept(keep: Path | None, setup: str) -> Path | None:
    return None if keep is None else keep / f"callgrind-{setup.replace(', ', '-').replace(' ', '-')}.out"


def run(requests: int, keep: Path | None = None, app: str = "write") -> dict[str, Any]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    return asyncio.run(measure(requests, keep, APPS[app]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="a direct write's instructions on the primary, with and without forwarder"
    )
    parser.add_argument("--requests", type=int, default=200, help="POSTs counted per server")
    parser.add_argument("--keep", type=Path, help="a directory to copy each setup's callgrind dump to")
    parser.add_argument("--app", choices=sorted(APPS), default="write", help="which app writes (see APPS)")
    args = parser.parse_args()
    result = run(args.requests, args.keep, args.app)
    report(
        "write_instructions" if args.app == "write" else f"write_instructions_{args.app}",
        result,
        result["rows"],
        COLUMNS,
    )
    for setup, outcomes in result["outcomes"].items():
        print(f"{setup}'s txids:", outcomes)
