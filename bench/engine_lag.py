"""Engine lag: from a commit on the primary to the row readable on a replica (Litestream's figure, not ours).

On the local cluster (`litestream replicate` with 10 ms monitor and sync intervals, a `file`
replica, `restore -f -follow-interval 10ms` followers), this process commits a row straight into
the primary's database and watches a replica's `-txid` file; each time it changes, a fresh
read-only connection checks for the row. Two ways, alternated:

- Litestream alone: nothing else is done; the row ships on Litestream's own schedule.
- with `POST /sync`: the control socket is asked to ship at once, as `commit_position()` did for
  every write before it worked the txid out from local files (`litestream_position`); it still
  does when those cannot tell.

    .venv/bin/python -m bench.engine_lag [--rounds 150]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.local_cluster import on_cluster
from bench.stats import LATENCY, report, summary_ms
from forwarder.dev import Cluster
from forwarder.engines.base import Role
from forwarder.engines.litestream import LitestreamEngine

POLL = 0.00025
"""Seconds between reads of the replica's `-txid` file: the resolution of the measurement."""


def row_visible(database: Path, row_id: int) -> bool:
    conn = sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT 1 FROM writes WHERE id = ?", (row_id,)).fetchone() is not None
    except sqlite3.OperationalError:  # no schema yet on the replica
        return False
    finally:
        conn.close()


async def until_visible(database: Path, row_id: int, timeout: float = 10.0) -> float:
    """Wait until `row_id` is readable on the replica; return the moment it was seen."""
    txid_file = database.with_name(database.name + "-txid")
    last = None
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            current = txid_file.read_bytes()
        except FileNotFoundError:
            current = None
        if current != last:
            last = current
            if row_visible(database, row_id):
                return time.perf_counter()
        await asyncio.sleep(POLL)
    raise TimeoutError(f"row {row_id} did not reach {database} within {timeout:g}s")


async def measure(cluster: Cluster, rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"Litestream alone": [], "with POST /sync": [], "POST /sync itself": []}
    primary = sqlite3.connect(cluster.primary.database, timeout=5, isolation_level=None)
    engine = LitestreamEngine(cluster.primary.database, Role.PRIMARY, socket_path=cluster.socket_path)
    engine.covering = None  # always POST /sync: that is what this measures
    replica = cluster.replicas[0].database
    try:
        await engine.start()
        await until_visible(replica, primary.execute("INSERT INTO writes (text) VALUES ('warm')").lastrowid or 0)
        for i in range(rounds):
            kinds = ["Litestream alone", "with POST /sync"]
            random.shuffle(kinds)
            for kind in kinds:
                await asyncio.sleep(random.uniform(0, 0.01))  # no phase lock with the 10 ms intervals
                row_id = primary.execute("INSERT INTO writes (text) VALUES (?)", (f"lag {i}",)).lastrowid
                assert row_id is not None
                committed = time.perf_counter()
                if kind == "with POST /sync":
                    await engine.commit_position()
                    samples["POST /sync itself"].append(time.perf_counter() - committed)
                samples[kind].append(await until_visible(replica, row_id) - committed)
    finally:
        await engine.aclose()
        primary.close()
    return samples


async def run(rounds: int, cluster: Cluster | None = None) -> dict[str, Any]:
    samples = await on_cluster(cluster, lambda on: measure(on, rounds))
    return {"rows": [{"measure": name, **summary_ms(values)} for name, values in samples.items()], "poll_s": POLL}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Litestream's commit-to-replica lag on the local cluster")
    parser.add_argument("--rounds", type=int, default=150)
    args = parser.parse_args()
    result = asyncio.run(run(args.rounds))
    report("engine_lag", result, result["rows"], ["measure", *LATENCY])
