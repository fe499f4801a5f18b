"""Forwarded-write latency on a real local cluster (uvicorn + Litestream on loopback).

Alternates, round by round: a direct write on the primary (baseline), the same write through the
smallest uvicorn + httpx reverse proxy (`bench/apps/bare_proxy.py`: what one extra Python hop costs
by itself), the same write sent to a replica in proxy mode, and the same write through
`@primary_only` from a replica's websocket.
The proxied write is decomposed from `Server-Timing`: hop to the primary and back, the primary's
handler, its `commit_position` (it waits there for the LTX file that holds the write) and the
replica's wait for that txid. Its replication wait is both waits, less the same round's direct
`commit_position` (the txid a direct write pays too): the time Litestream takes to carry the
write, wherever the request spends it.

    .venv/bin/python -m bench.forwarded_write [--rounds 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from bench.local_cluster import on_cluster
from bench.servers import uvicorn_server
from bench.stats import LATENCY, report, summary_ms
from forwarder.dev import Cluster


def timings(response: httpx.Response) -> dict[str, float]:
    """`Server-Timing` entries of every header, in seconds."""
    out: dict[str, float] = {}
    for header in response.headers.get_list("server-timing"):
        for entry in header.split(","):
            name, _, rest = entry.strip().partition(";dur=")
            if rest:
                out[name] = float(rest) / 1000
    return out


async def measure(cluster: Cluster, rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {
        k: []
        for k in (
            "direct: total",
            "direct: handler",
            "direct: commit_position",
            "bare hop (baseline proxy): total",
            "proxy: total",
            "proxy: hop (total - handler - commit - replica's wait)",
            "proxy: commit_position (waits for the LTX)",
            "proxy: the replica's wait",
            "rpc: total",
        )
    }
    replica = cluster.replicas[0]
    bare = uvicorn_server("bench.apps.bare_proxy:app", {"BENCH_UPSTREAM": cluster.primary.url}, "/", like_nodes=True)
    with bare as bare_url:
        async with httpx.AsyncClient(timeout=10) as client:
            socket: ClientConnection = await connect(replica.url.replace("http", "ws") + "/rpc")
            for _ in range(20):  # warm up connections and code paths
                await client.post(f"{replica.url}/write", content="warm")
                await client.post(f"{bare_url}/write", content="warm")
                await socket.send("warm")
                await socket.recv()
            for i in range(rounds):
                kinds = ["direct", "bare", "proxy", "rpc"]
                random.shuffle(kinds)
                for kind in kinds:
                    client.cookies.clear()
                    text = f"{kind} {i}"
                    started = time.perf_counter()
                    if kind == "rpc":
                        await socket.send(text)
                        reply = json.loads(await socket.recv())
                        assert isinstance(reply.get("id"), int), reply
                        samples["rpc: total"].append(time.perf_counter() - started)
                        continue
                    url = {"direct": cluster.primary.url, "bare": bare_url, "proxy": replica.url}[kind]
                    response = await client.post(f"{url}/write", content=text)
                    total = time.perf_counter() - started
                    assert response.status_code == 201, response.text
                    t = timings(response)
                    if kind == "bare":
                        samples["bare hop (baseline proxy): total"].append(total)
                    elif kind == "direct":
                        samples["direct: total"].append(total)
                        samples["direct: handler"].append(t["app"])
                        samples["direct: commit_position"].append(t["commit"])
                    else:
                        samples["proxy: total"].append(total)
                        samples["proxy: commit_position (waits for the LTX)"].append(t["commit"])
                        samples["proxy: the replica's wait"].append(t["replication"])
                        samples["proxy: hop (total - handler - commit - replica's wait)"].append(
                            total - t["app"] - t["commit"] - t["replication"]
                        )
            await socket.close()
    return samples


async def run(rounds: int, cluster: Cluster | None = None) -> dict[str, Any]:
    samples = await on_cluster(cluster, lambda on: measure(on, rounds))
    # Paired per round (the four kinds ran back to back): drift on the shared machine cancels out.
    samples["proxy: replication wait (both waits - direct commit_position)"] = [
        commit + wait - direct
        for commit, wait, direct in zip(
            samples["proxy: commit_position (waits for the LTX)"],
            samples["proxy: the replica's wait"],
            samples["direct: commit_position"],
            strict=True,
        )
    ]
    samples["paired: proxy - direct - replication wait"] = [
        proxy - direct - wait
        for proxy, direct, wait in zip(
            samples["proxy: total"],
            samples["direct: total"],
            samples["proxy: replication wait (both waits - direct commit_position)"],
            strict=True,
        )
    ]
    samples["paired: bare hop - direct"] = [
        bare - direct
        for bare, direct in zip(samples["bare hop (baseline proxy): total"], samples["direct: total"], strict=True)
    ]
    rows = [{"measure": name, **summary_ms(values)} for name, values in samples.items()]
    direct = summary_ms(samples["direct: total"])
    proxy = summary_ms(samples["proxy: total"])
    wait = summary_ms(samples["proxy: replication wait (both waits - direct commit_position)"])
    bare_hop = summary_ms(samples["bare hop (baseline proxy): total"])
    hop = summary_ms(samples["proxy: hop (total - handler - commit - replica's wait)"])
    return {
        "rows": rows,
        "overhead": {
            "description": "proxied write minus (direct write on the primary + replication wait), p50",
            "p50_ms": round(proxy["p50_ms"] - direct["p50_ms"] - wait["p50_ms"], 3),
            "paired_p50_ms": summary_ms(samples["paired: proxy - direct - replication wait"])["p50_ms"],
            "paired_bare_hop_p50_ms": summary_ms(samples["paired: bare hop - direct"])["p50_ms"],
            "hop_p50_ms": hop["p50_ms"],
            "bare_hop_p50_ms": round(bare_hop["p50_ms"] - direct["p50_ms"], 3),
            "bare_hop_description": "baseline proxy (uvicorn + httpx, nothing else) minus direct write, p50",
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="forwarded-write latency on a local cluster")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    result = asyncio.run(run(args.rounds))
    report("forwarded_write", result, result["rows"], ["measure", *LATENCY])
    overhead = result["overhead"]
    print(
        f"overhead beyond direct write + replication, paired per round, p50: {overhead['paired_p50_ms']} ms; "
        f"one bare uvicorn + httpx hop: {overhead['paired_bare_hop_p50_ms']} ms"
    )
