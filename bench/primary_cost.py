"""What forwarder costs the primary: the same write app with and without it, at 1, 8 and 32 connections.

Setups, all running for the whole benchmark (so each sees the same background load), each loaded
in turn by one `wrk` thread of POSTs, the order rotating every round:

- `bare`: `bench/apps/write_app.py` without forwarder (`BENCH_BARE=1`) on its own database;
- `litestream`: the same bare app, its database replicated by `litestream replicate` (the dev
  cluster's config) to a directory one `restore -f` follower reads: a single-node app with
  Litestream and no forwarder;
- `forwarder`: the same app inside `ForwarderMiddleware` as the primary of a `forwarder dev`
  cluster with one replica (same Litestream processes), `promise_position()` giving the txid
  (from local files: the newest L0 txid, or `newest + 2` kept by `litestream_keeper`);
- `forwarder, status`: the same, asking sync-status once for every direct write (what a quiet
  primary does, `QUIET_GAP`): `newest + 1` when no sync is active, else `newest + 2`;
- `forwarder, exact`: the same, with the covering check that waits out an active sync (what a
  forwarded write gets, and every write before `promise_position`);
- `forwarder, POST /sync`: the same, with every write's txid from `POST /sync` (before that);
- `forwarder, no txid`: the same, answering txid 1 without asking Litestream. Not correct, not a
  candidate: the floor that shows how much of the primary's cost is the txid.

The target: forwarder / litestream throughput >= 0.9 and p50 added < 1 ms, at every concurrency.

    .venv/bin/python -m bench.primary_cost [--rounds 3 --seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from bench.local_cluster import local_cluster
from bench.servers import uvicorn_server
from bench.stats import report
from bench.write_throughput import CONCURRENCY, wrk
from forwarder.dev.replication import Follower, Replicator

SETUPS = (
    "bare",
    "litestream",
    "forwarder",
    "forwarder, status",
    "forwarder, exact",
    "forwarder, POST /sync",
    "forwarder, no txid",
)
COLUMNS = [
    "connections",
    *(f"{setup} req/s" for setup in SETUPS),
    "forwarder / litestream",
    "forwarder p50 added ms",
    "status / litestream",
    "status p50 added ms",
    "exact / litestream",
    "exact p50 added ms",
    "POST /sync / litestream",
    "no txid / litestream",
    "litestream / bare",
    "p50 ms (bare, litestream, forwarder, status, exact, /sync, no txid)",
    "load",
]


async def measure(rounds: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        async with AsyncExitStack() as stack:
            urls: dict[str, str] = {}
            bare_db = base / "bare" / "app.db"
            bare_db.parent.mkdir()
            urls["bare"] = stack.enter_context(
                uvicorn_server("bench.apps.write_app:app", {"BENCH_BARE": "1", "BENCH_DATABASE": str(bare_db)}, "/")
            )
            ls_base = base / "litestream"
            replicator = Replicator(
                ls_base / "app.db", ls_base / "replica", ls_base / "ls.sock", log_path=base / "replicate.log"
            )
            await replicator.start()
            stack.push_async_callback(replicator.stop)
            env = {"BENCH_BARE": "1", "BENCH_DATABASE": str(ls_base / "app.db")}
            urls["litestream"] = stack.enter_context(uvicorn_server("bench.apps.write_app:app", env, "/"))
            follower = Follower(
                "follower", ls_base / "follower" / "app.db", ls_base / "replica", log_path=base / "f.log"
            )
            await follower.start()
            stack.push_async_callback(follower.stop)
            cluster = await stack.enter_async_context(local_cluster(replicas=1))
            urls["forwarder"] = cluster.primary.url
            status = await stack.enter_async_context(local_cluster(replicas=1, env={"BENCH_COMMIT": "status"}))
            urls["forwarder, status"] = status.primary.url
            exact = await stack.enter_async_context(local_cluster(replicas=1, env={"BENCH_COMMIT": "exact"}))
            urls["forwarder, exact"] = exact.primary.url
            before = await stack.enter_async_context(local_cluster(replicas=1, env={"BENCH_COMMIT": "sync"}))
            urls["forwarder, POST /sync"] = before.primary.url
            floor = await stack.enter_async_context(local_cluster(replicas=1, env={"BENCH_COMMIT": "none"}))
            urls["forwarder, no txid"] = floor.primary.url
            for setup in SETUPS:  # warm up
                await wrk([urls[setup]], 2, 1)
            rows = []
            for connections in CONCURRENCY:
                runs: dict[str, list[dict[str, Any]]] = {setup: [] for setup in SETUPS}
                load = os.getloadavg()[0]
                for i in range(rounds):
                    order = SETUPS[i % len(SETUPS) :] + SETUPS[: i % len(SETUPS)]
                    for setup in order:
                        runs[setup].append(await wrk([urls[setup]], connections, seconds))
                rows.append(_row(connections, runs, load))
            return {"rows": rows, "rounds": rounds, "seconds": seconds}


def _row(connections: int, runs: dict[str, list[dict[str, Any]]], load: float) -> dict[str, Any]:
    def median(setup: str, key: str) -> float:
        return float(statistics.median(run[key] for run in runs[setup]))

    rps = {setup: median(setup, "rps") for setup in SETUPS}
    p50 = {setup: median(setup, "p50_us") / 1000 for setup in SETUPS}
    return {
        "connections": connections,
        **{f"{setup} req/s": round(rps[setup]) for setup in SETUPS},
        "forwarder / litestream": round(rps["forwarder"] / rps["litestream"], 3),
        "forwarder p50 added ms": round(p50["forwarder"] - p50["litestream"], 2),
        "status / litestream": round(rps["forwarder, status"] / rps["litestream"], 3),
        "status p50 added ms": round(p50["forwarder, status"] - p50["litestream"], 2),
        "exact / litestream": round(rps["forwarder, exact"] / rps["litestream"], 3),
        "exact p50 added ms": round(p50["forwarder, exact"] - p50["litestream"], 2),
        "POST /sync / litestream": round(rps["forwarder, POST /sync"] / rps["litestream"], 3),
        "no txid / litestream": round(rps["forwarder, no txid"] / rps["litestream"], 3),
        "litestream / bare": round(rps["litestream"] / rps["bare"], 3),
        "p50 ms (bare, litestream, forwarder, status, exact, /sync, no txid)": ", ".join(
            f"{p50[s]:.1f}" for s in SETUPS
        ),
        "load": round(load, 2),
        "runs": runs,
    }


def run(rounds: int, seconds: float) -> dict[str, Any]:
    return asyncio.run(measure(rounds, seconds))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the primary's write throughput with and without forwarder")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2)
    args = parser.parse_args()
    result = run(args.rounds, args.seconds)
    report("primary_cost", result, result["rows"], COLUMNS)
