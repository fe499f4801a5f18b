"""What a Litestream follower costs, by how many LTX files its store holds. Measured.

Litestream 0.5.17's `restore -f` lists all of L0 on every poll (a `stat` per file on a file store),
and on a poll that finds nothing new all of L1 and L2 as well. So:

1. **Idle, by L1 files:** one primary and one follower, Litestream's own 24 h snapshot, the L1
   compaction sped up to 50 ms so that L1 grows in seconds what it grows in hours at 5 s: writes in
   bursts, then the follower's CPU while nothing is written, with the files counted. The ratio is
   against the same follower's idle CPU before the first burst, in the same run.
2. **Forwarded writes, by retention:** the write app on a primary and two replicas, wrk POSTs
   to both replicas at 32 connections each; the retention this module shipped before
   (`BEFORE`: L0 15 s, L1 every 5 s, 24 h snapshot) against `FILE_INTERVALS`, a fresh
   cluster per round, setups alternating. Followers' CPU per write, throughput, and the
   followers' CPU in the 3 s after the load stops.

    .venv/bin/python -m bench.follower_cost [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from bench.local_cluster import cpu_seconds, cpu_used, local_cluster
from bench.servers import process_cpu_seconds
from bench.stats import report, table
from bench.write_throughput import wrk
from forwarder.dev.replication import Follower, Replicator
from forwarder.engines.litestream_config import FILE_INTERVALS, Intervals
from forwarder.replica.store_files import files_by_level, ltx_files
from forwarder.store import Store

BEFORE = Intervals(l0_retention=15.0, compaction=5.0, snapshot=86400.0)
GROWING = Intervals(l0_retention=0.2, compaction=0.05, snapshot=86400.0)
COLUMNS = ["L1 + L2 files", "idle follower CPU %", "vs one file"]
LOAD_COLUMNS = [
    "retention",
    "forwarded req/s",
    "followers CPU ms/write",
    "L0 files under load",
    "followers CPU % after the load",
    "req/s vs before",
    "followers CPU/write vs before",
]


async def count_files(store: Store, *levels: int) -> int:
    """LTX files at `levels` of `store`, as `forwarder replica` counts them (`litestream ltx`)."""
    counts = files_by_level(await ltx_files(store))
    return sum(counts[level] for level in levels)


async def idle_cpu(pid: int, seconds: float) -> float:
    """Percent of one core `pid` used over the next `seconds`."""
    before = process_cpu_seconds(pid) or 0.0
    await asyncio.sleep(seconds)
    return 100 * ((process_cpu_seconds(pid) or 0.0) - before) / seconds


async def idle_by_files(bursts: int, burst_seconds: float) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        replicator = Replicator(
            base / "primary" / "app.db", base / "store", base / "ls.sock", log_path=base / "r.log", intervals=GROWING
        )
        follower = Follower("r", base / "r" / "app.db", replicator.store, log_path=base / "f.log", intervals=GROWING)
        await replicator.start()
        try:
            with closing(sqlite3.connect(replicator.database)) as db:
                db.execute("CREATE TABLE IF NOT EXISTS items (n INTEGER)")
                db.commit()
                await follower.start()
                assert follower.process is not None and follower.process.pid is not None
                pid = follower.process.pid
                await asyncio.sleep(1)
                baseline = await idle_cpu(pid, 3)
                rows.append(
                    {"L1 + L2 files": await count_files(replicator.store, 1, 2), "idle follower CPU %": baseline}
                )
                for _ in range(bursts):
                    deadline = time.monotonic() + burst_seconds
                    while time.monotonic() < deadline:
                        db.execute("INSERT INTO items VALUES (1)")
                        db.commit()
                        await asyncio.sleep(0.005)
                    await asyncio.sleep(1)  # L0 drains (0.2 s retention): what is left to list is L1 and L2
                    cpu = await idle_cpu(pid, 3)
                    rows.append(
                        {"L1 + L2 files": await count_files(replicator.store, 1, 2), "idle follower CPU %": cpu}
                    )
        finally:
            await follower.stop()
            await replicator.stop()
    for row in rows:
        row["vs one file"] = round(row["idle follower CPU %"] / rows[0]["idle follower CPU %"], 2)
        row["idle follower CPU %"] = round(row["idle follower CPU %"], 1)
    return rows


async def under_load(name: str, intervals: Intervals, warm: float, seconds: float) -> dict[str, Any]:
    async with local_cluster(intervals=intervals) as cluster:
        targets = [node.url for node in cluster.replicas[:2]]
        await wrk(targets, 32, warm)  # the store fills to its steady state (L0: retention + compaction)
        before = cpu_seconds(cluster)
        result = await wrk(targets, 32, seconds)
        used = cpu_used(before, cpu_seconds(cluster))
        l0 = await count_files(cluster.store, 0)
        before = cpu_seconds(cluster)
        await asyncio.sleep(3)
        after = cpu_used(before, cpu_seconds(cluster))
        return {
            "retention": name,
            "forwarded req/s": result["rps"],
            "followers CPU ms/write": 1000 * used["replica followers"] / result["requests"],
            "L0 files under load": l0,
            "followers CPU % after the load": 100 * after["replica followers"] / 3,
        }


async def load_ab(rounds: int, warm: float, seconds: float) -> list[dict[str, Any]]:
    setups = {"before (L0 15 s, L1 5 s, snapshot 24 h)": BEFORE, "FILE_INTERVALS": FILE_INTERVALS}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in setups}
    for i in range(rounds):
        for name in list(setups) if i % 2 == 0 else list(setups)[::-1]:
            runs[name].append(await under_load(name, setups[name], warm, seconds))
    rows = []
    for name, results in runs.items():
        row: dict[str, Any] = {"retention": name}
        for key in LOAD_COLUMNS[1:5]:
            row[key] = round(statistics.median(r[key] for r in results), 2)
        rows.append(row)
    ratios = [
        (new["forwarded req/s"] / old["forwarded req/s"], new["followers CPU ms/write"] / old["followers CPU ms/write"])
        for old, new in zip(*runs.values(), strict=True)
    ]
    rows[1]["req/s vs before"] = round(statistics.median(r for r, _ in ratios), 3)
    rows[1]["followers CPU/write vs before"] = round(statistics.median(c for _, c in ratios), 3)
    return rows


def run(rounds: int, bursts: int = 4) -> dict[str, Any]:
    return {
        "idle": asyncio.run(idle_by_files(bursts, 10.0)),
        "load": asyncio.run(load_ab(rounds, 20.0, 6.0)),
        "rounds": rounds,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a Litestream follower's CPU by the LTX files of its store")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    result = run(args.rounds)
    report("follower_cost", result, result["idle"], COLUMNS)
    print(table(result["load"], LOAD_COLUMNS))
