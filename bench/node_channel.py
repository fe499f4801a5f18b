"""The node channel against one HTTP request per forward: the same forwarded writes on two clusters.

Two `forwarder dev` clusters of the write app (a primary, two replicas), one with the node channel
(the default), one with `FORWARDER_NODE_CHANNEL=false`. Two measures, each alternating the two:

- latency: sequential writes to a replica, one to each cluster per round in shuffled order,
  `total - commit_position - the replica's wait` (what the hop costs; both waits are Litestream's and the
  same on both); the paired difference per round is the figure;
- throughput: `wrk` POSTs from both replicas at 8 and 32 connections per replica, the other
  cluster paused meanwhile (SIGSTOP, `local_cluster.pause_cluster`), with every cluster process's
  CPU per write.

    .venv/bin/python -m bench.node_channel [--rounds 2 --seconds 3 --writes 200]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

import httpx

from bench.forwarded_write import timings
from bench.local_cluster import cpu_seconds, cpu_used, local_cluster, pause_cluster
from bench.stats import report, run_median, summary_ms
from bench.write_throughput import wrk
from forwarder.dev import Cluster

SETUPS: dict[str, dict[str, str]] = {"channel": {}, "http": {"FORWARDER_NODE_CHANNEL": "false"}}
CONCURRENCY = (8, 32)


async def latency(clusters: dict[str, Cluster], writes: int) -> dict[str, Any]:
    hop: dict[str, list[float]] = {name: [] for name in clusters}
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        for cluster in clusters.values():  # warm up connections, channels and code paths
            for _ in range(20):
                await client.post(f"{cluster.replicas[0].url}/write", content="warm")
        for i in range(writes):
            order = list(clusters)
            random.shuffle(order)
            for name in order:
                client.cookies.clear()
                started = time.perf_counter()
                response = await client.post(f"{clusters[name].replicas[i % 2].url}/write", content=f"{name} {i}")
                total = time.perf_counter() - started
                assert response.status_code == 201, response.text
                t = timings(response)
                hop[name].append(total - t["commit"] - t["replication"])  # less the waits for Litestream
    paired = [channel - http for channel, http in zip(hop["channel"], hop["http"], strict=True)]
    return {
        "rows": [
            {"measure": "channel: total - both waits for the txid", **summary_ms(hop["channel"])},
            {"measure": "http: total - both waits for the txid", **summary_ms(hop["http"])},
            {"measure": "paired: channel - http", **summary_ms(paired)},
        ]
    }


async def throughput(clusters: dict[str, Cluster], rounds: int, seconds: float) -> list[dict[str, Any]]:
    async def loaded(name: str, connections: int, duration: float) -> dict[str, Any]:
        cluster = clusters[name]
        pause_cluster(cluster, False)  # the other stays paused: only this cluster and wrk run
        await asyncio.sleep(0.2)  # its timers and followers catch up on the time it was stopped
        try:
            before = cpu_seconds(cluster)
            result = await wrk([node.url for node in cluster.replicas], connections, duration)
            used = cpu_used(before, cpu_seconds(cluster))
            result["cpu_ms_per_write"] = round(1000 * sum(used.values()) / result["requests"], 2)
            return result
        finally:
            pause_cluster(cluster, True)

    for cluster in clusters.values():
        pause_cluster(cluster, True)
    try:
        for name in clusters:  # warm up
            await loaded(name, 2, 1)
        rows = []
        for connections in CONCURRENCY:
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in clusters}
            for i in range(rounds):
                for name in list(clusters) if i % 2 == 0 else list(reversed(clusters)):
                    runs[name].append(await loaded(name, connections, seconds))

            median = partial(run_median, runs)

            channel, http = median("channel", "rps"), median("http", "rps")
            rows.append(
                {
                    "connections per replica": connections,
                    "channel req/s": round(channel),
                    "http req/s": round(http),
                    "channel / http": round(channel / http, 3),
                    "p50 ms (channel, http)": f"{median('channel', 'p50_us') / 1000:.1f}, "
                    f"{median('http', 'p50_us') / 1000:.1f}",
                    "CPU ms/write (channel, http)": f"{median('channel', 'cpu_ms_per_write'):.2f}, "
                    f"{median('http', 'cpu_ms_per_write'):.2f}",
                }
            )
        return rows
    finally:
        for cluster in clusters.values():
            pause_cluster(cluster, False)


async def run(rounds: int, seconds: float, writes: int) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        clusters = {name: await stack.enter_async_context(local_cluster(2, env=env)) for name, env in SETUPS.items()}
        hop = await latency(clusters, writes)
        rows = await throughput(clusters, rounds, seconds)
    return {"latency": hop["rows"], "rows": rows, "rounds": rounds, "seconds": seconds}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="forwarded writes over the node channel against HTTP")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--writes", type=int, default=200)
    args = parser.parse_args()
    result = asyncio.run(run(args.rounds, args.seconds, args.writes))
    report("node_channel", result, result["latency"], ["measure", "n", "p50_ms", "p99_ms", "max_ms"])
    report("node_channel", result, result["rows"], list(result["rows"][0]))
