"""The node-to-node hop on uvloop + httptools (`forwarder dev`'s default), uvloop + h11 and asyncio + h11.

Three local clusters of the write app run side by side: one as `forwarder dev` starts it now
(`--loop uvloop --http httptools`), the others with `UVICORN_LOOP` / `UVICORN_HTTP` set. Round by
round, alternating which goes first: a block of writes one at a time on each (direct on the
primary, then proxied through a replica, decomposed from `Server-Timing`: its replication wait is
the primary's `commit_position`, which waits for the LTX, and the replica's wait), then a `wrk` run
of forwarded writes at 32 connections from the replica.

    .venv/bin/python -m bench.server_stack [--rounds 3 --writes 40 --seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from contextlib import AsyncExitStack
from typing import Any

import httpx

from bench.forwarded_write import timings
from bench.local_cluster import local_cluster
from bench.stats import percentile, report
from bench.write_throughput import wrk
from forwarder.dev import Cluster

STACKS = {
    "uvloop + httptools (forwarder dev's default)": {},
    "uvloop + h11": {"UVICORN_LOOP": "uvloop", "UVICORN_HTTP": "h11"},
    "asyncio + h11": {"UVICORN_LOOP": "asyncio", "UVICORN_HTTP": "h11"},
}
COLUMNS = [
    "stack",
    "direct p50 ms",
    "proxied p50 / p99 ms",
    "hop p50 ms",
    "replication wait p50 ms",
    "forwarded req/s at 32",
    "forwarded p50 ms at 32",
]


async def writes(client: httpx.AsyncClient, cluster: Cluster, count: int, out: dict[str, list[float]]) -> None:
    replica = cluster.replicas[0]
    for i in range(count):
        for kind, url in (("direct", cluster.primary.url), ("proxied", replica.url)):
            client.cookies.clear()
            started = time.perf_counter()
            response = await client.post(f"{url}/write", content=f"{kind} {i}")
            total = time.perf_counter() - started
            assert response.status_code == 201, response.text
            out[kind].append(total)
            if kind == "proxied":
                t = timings(response)
                out["hop"].append(total - t["app"] - t["commit"] - t["replication"])
                out["wait"].append(t["commit"] + t["replication"])


async def measure(rounds: int, count: int, seconds: float) -> dict[str, Any]:
    async with AsyncExitStack() as stack, httpx.AsyncClient(timeout=10) as client:
        clusters = {name: await stack.enter_async_context(local_cluster(1, env)) for name, env in STACKS.items()}
        samples: dict[str, dict[str, list[float]]] = {
            name: {"direct": [], "proxied": [], "hop": [], "wait": []} for name in STACKS
        }
        loaded: dict[str, list[dict[str, Any]]] = {name: [] for name in STACKS}
        for cluster in clusters.values():  # warm up
            await writes(client, cluster, 10, {"direct": [], "proxied": [], "hop": [], "wait": []})
        names = list(STACKS)
        for i in range(rounds):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                await writes(client, clusters[name], count, samples[name])
                loaded[name].append(await wrk([clusters[name].replicas[0].url], 32, seconds))
        rows = []
        for name in STACKS:
            s = {key: [v * 1000 for v in values] for key, values in samples[name].items()}
            rows.append(
                {
                    "stack": name,
                    "direct p50 ms": round(percentile(s["direct"], 50), 2),
                    "proxied p50 / p99 ms": f"{percentile(s['proxied'], 50):.2f} / {percentile(s['proxied'], 99):.2f}",
                    "hop p50 ms": round(percentile(s["hop"], 50), 2),
                    "replication wait p50 ms": round(percentile(s["wait"], 50), 2),
                    "forwarded req/s at 32": round(statistics.median(run["rps"] for run in loaded[name])),
                    "forwarded p50 ms at 32": round(statistics.median(run["p50_us"] for run in loaded[name]) / 1000, 1),
                    "runs": loaded[name],
                }
            )
        return {"rows": rows, "rounds": rounds, "writes": count, "seconds": seconds, "load": os.getloadavg()[0]}


def run(rounds: int, count: int, seconds: float) -> dict[str, Any]:
    return asyncio.run(measure(rounds, count, seconds))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the forward hop on three uvicorn stacks")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writes", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=2)
    args = parser.parse_args()
    result = run(args.rounds, args.writes, args.seconds)
    report("server_stack", result, result["rows"], COLUMNS)
