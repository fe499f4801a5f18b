"""The off-Fly topology's cost: engine lag and S3 requests, on a local cluster whose store is moto on loopback.

For each (sync, follow) interval pair: a primary and two replicas of `bench/apps/write_app.py` on an
`s3` store (moto's standalone server), then

- idle: S3 requests per second of the whole cluster (replicate + 2 followers), then of
  `replicate` alone (followers stopped), so one follower's share is the difference / 2;
- writes: rows committed straight into the primary's database, spaced at random over one follow
  interval, each followed by `POST /sync` (how `commit_position()` made a forwarded write's txid
  before the covering check) or left to Litestream's own schedule (alternated; what a forwarded
  write waits for now, the primary no longer forcing a sync); the lag is commit to the row readable on a
  replica (fresh read-only connection). Per write: uploads (PUT) and object downloads (GET, by
  both followers); listings (LIST) are per poll, not per write, so they are given per second
  during the writes, next to the idle rate.

moto logs one line per request; those lines are what is counted (all methods, this bucket only).

    .venv/bin/python -m bench.s3_store [--rounds 60] [--idle 10] [--pairs 100ms/100ms,100ms/250ms,1s/1s]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.engine_lag import until_visible
from bench.servers import REPO
from bench.stats import LATENCY, report, summary_ms
from forwarder.dev import Cluster
from forwarder.dev.edge import parse_duration
from forwarder.dev.s3server import LocalS3Server
from forwarder.engines.base import Role
from forwarder.engines.litestream import LitestreamEngine
from forwarder.engines.litestream_config import S3_INTERVALS, Intervals

BUCKET = "forwarder-bench"


def requests(server: LocalS3Server) -> int:
    return sum(server.request_counts(BUCKET).values())


async def idle_rate(server: LocalS3Server, seconds: float) -> float:
    start, began = requests(server), time.perf_counter()
    await asyncio.sleep(seconds)
    return (requests(server) - start) / (time.perf_counter() - began)


async def measure(cluster: Cluster, server: LocalS3Server, rounds: int, idle: float) -> dict[str, Any]:
    await asyncio.sleep(2)  # past the start-up snapshot and first compactions
    cluster_idle = await idle_rate(server, idle)
    samples: dict[str, list[float]] = {"Litestream alone": [], "with POST /sync": [], "POST /sync itself": []}
    primary = sqlite3.connect(cluster.primary.database, timeout=5, isolation_level=None)
    engine = LitestreamEngine(cluster.primary.database, Role.PRIMARY, socket_path=cluster.socket_path)
    replica = cluster.replicas[0].database
    try:
        await engine.start()
        await until_visible(replica, primary.execute("INSERT INTO writes (text) VALUES ('warm')").lastrowid or 0)
        start, began = server.request_counts(BUCKET), time.perf_counter()
        for i in range(rounds):
            kinds = ["Litestream alone", "with POST /sync"]
            random.shuffle(kinds)
            for kind in kinds:
                await asyncio.sleep(random.uniform(0, cluster.intervals.follow))  # no phase lock with the polls
                row_id = primary.execute("INSERT INTO writes (text) VALUES (?)", (f"lag {i}",)).lastrowid
                assert row_id is not None
                committed = time.perf_counter()
                if kind == "with POST /sync":
                    await engine.commit_position()
                    samples["POST /sync itself"].append(time.perf_counter() - committed)
                samples[kind].append(await until_visible(replica, row_id, timeout=30) - committed)
        elapsed = time.perf_counter() - began
        writes = 2 * rounds
        during = server.request_counts(BUCKET)
        during.subtract(start)
    finally:
        await engine.aclose()
        primary.close()
    # replicate alone: the followers stopped, under their node locks so the watchdog leaves them be.
    locks = [node.lock for node in cluster.replicas]
    for lock in locks:
        await lock.acquire()
    try:
        await asyncio.gather(*(node.follower.stop() for node in cluster.replicas if node.follower))
        await asyncio.sleep(1)
        replicate_idle = await idle_rate(server, idle)
    finally:
        for lock in locks:
            lock.release()
    return {
        "lag": samples,
        "idle_rps_cluster": cluster_idle,
        "idle_rps_replicate": replicate_idle,
        "idle_rps_per_follower": (cluster_idle - replicate_idle) / len(cluster.replicas),
        "put_per_write": during["PUT"] / writes,
        "get_per_write": during["GET"] / writes,
        "list_rps_writing": during["LIST"] / elapsed,
        "writes": writes,
        "writes_per_s": writes / elapsed,
    }


async def run_pair(intervals: Intervals, rounds: int, idle: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = LocalS3Server(log_path=Path(tmp) / "moto.log")
        await server.start()
        try:
            store = await server.store(BUCKET, "bench/app.db")
            cluster = Cluster(
                app="bench.apps.write_app:app",
                data_dir=Path(tmp) / "cluster",
                replicas=2,
                edge=False,
                app_dir=REPO,
                store=store,
                intervals=intervals,
            )
            await cluster.start()
            try:
                return await measure(cluster, server, rounds, idle)
            finally:
                await cluster.stop()
        finally:
            await server.stop()


def label(intervals: Intervals) -> str:
    return f"sync {intervals.sync * 1000:g} ms / follow {intervals.follow * 1000:g} ms"


async def run(pairs: list[Intervals], rounds: int, idle: float) -> dict[str, Any]:
    lag_rows: list[dict[str, Any]] = []
    cost_rows: list[dict[str, Any]] = []
    for intervals in pairs:
        print(f"{label(intervals)}...", flush=True)
        result = await run_pair(intervals, rounds, idle)
        for name, values in result["lag"].items():
            lag_rows.append({"intervals": label(intervals), "measure": name, **summary_ms(values)})
        cost_rows.append(
            {
                "intervals": label(intervals),
                "idle req/s (cluster)": round(result["idle_rps_cluster"], 1),
                "idle req/s (replicate)": round(result["idle_rps_replicate"], 1),
                "idle req/s (1 follower)": round(result["idle_rps_per_follower"], 1),
                "PUT/write": round(result["put_per_write"], 2),
                "GET/write": round(result["get_per_write"], 2),
                "LIST/s while writing": round(result["list_rps_writing"], 1),
            }
        )
    return {"lag": lag_rows, "cost": cost_rows, "rounds": rounds, "idle_s": idle}


def parse_pairs(text: str) -> list[Intervals]:
    pairs = []
    for item in text.split(","):
        sync, _, follow = item.partition("/")
        follow = follow or sync
        pairs.append(dataclasses.replace(S3_INTERVALS, sync=parse_duration(sync), follow=parse_duration(follow)))
    return pairs


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="engine lag and S3 request cost of the s3 store (moto, loopback)")
    parser.add_argument("--rounds", type=int, default=60, help="write pairs per interval setting (default: 60)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of each idle count (default: 10)")
    parser.add_argument("--pairs", default="100ms/100ms,100ms/250ms,1s/1s", help="SYNC/FOLLOW,... intervals")
    args = parser.parse_args()
    result = asyncio.run(run(parse_pairs(args.pairs), args.rounds, args.idle))
    report("s3_store_lag", result, result["lag"], ["intervals", "measure", *LATENCY])
    report("s3_store_cost", result, result["cost"], list(result["cost"][0]))
