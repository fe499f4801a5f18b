"""Forwarded-write latency on a real local cluster (uvicorn + Litestream on loopback).

Alternates, round by round: a direct write on the primary (baseline), the same write sent to a
replica in proxy mode, and the same write through `@primary_only` from a replica's websocket.
The proxied write is decomposed from `Server-Timing`: hop to the primary and back, the primary's
handler, `commit_position` (Litestream /sync) and the replica's replication wait.

    .venv/bin/python -m bench.forwarded_write [--rounds 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from bench.stats import summary_ms, table, write_results
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


async def run(rounds: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {
        k: []
        for k in (
            "direct: total",
            "direct: handler",
            "direct: commit_position",
            "proxy: total",
            "proxy: hop (total - handler - commit - replication)",
            "proxy: replication wait",
            "rpc: total",
        )
    }
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(app="example_app:app", data_dir=Path(tmp), replicas=2)
        await cluster.start()
        try:
            replica = cluster.replicas[0]
            async with httpx.AsyncClient(timeout=10) as client:
                socket: ClientConnection = await connect(replica.url.replace("http", "ws") + "/live")
                await socket.recv()
                for _ in range(20):  # warm up connections and code paths
                    await client.post(f"{replica.url}/api/messages", json={"author": "b", "text": "warm"})
                for i in range(rounds):
                    kinds = ["direct", "proxy", "rpc"]
                    random.shuffle(kinds)
                    for kind in kinds:
                        client.cookies.clear()
                        body = {"author": "bench", "text": f"{kind} {i}"}
                        started = time.perf_counter()
                        if kind == "rpc":
                            await socket.send(json.dumps({"type": "post", **body}))
                            reply = json.loads(await socket.recv())
                            while reply["type"] == "render":  # pushed whenever the node's position advances
                                reply = json.loads(await socket.recv())
                            assert reply["type"] == "ack", reply
                            samples["rpc: total"].append(time.perf_counter() - started)
                            continue
                        url = cluster.primary.url if kind == "direct" else replica.url
                        response = await client.post(f"{url}/api/messages", json=body)
                        total = time.perf_counter() - started
                        assert response.status_code == 201, response.text
                        t = timings(response)
                        if kind == "direct":
                            samples["direct: total"].append(total)
                            samples["direct: handler"].append(t["app"])
                            samples["direct: commit_position"].append(t["commit"])
                        else:
                            samples["proxy: total"].append(total)
                            samples["proxy: replication wait"].append(t["replication"])
                            samples["proxy: hop (total - handler - commit - replication)"].append(
                                total - t["app"] - t["commit"] - t["replication"]
                            )
                await socket.close()
        finally:
            await cluster.stop()
    rows = [{"measure": name, **summary_ms(values)} for name, values in samples.items()]
    direct = summary_ms(samples["direct: total"])
    proxy = summary_ms(samples["proxy: total"])
    wait = summary_ms(samples["proxy: replication wait"])
    hop = summary_ms(samples["proxy: hop (total - handler - commit - replication)"])
    return {
        "rows": rows,
        "overhead": {
            "description": "proxied write minus (direct write on the primary + replication wait), p50",
            "p50_ms": round(proxy["p50_ms"] - direct["p50_ms"] - wait["p50_ms"], 3),
            "hop_p50_ms": hop["p50_ms"],
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="forwarded-write latency on a local cluster")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    result = asyncio.run(run(args.rounds))
    path = write_results("forwarded_write", result)
    print(table(result["rows"], ["measure", "n", "p50_ms", "p99_ms", "max_ms"]))
    print(f"\noverhead beyond direct write + replication (p50): {result['overhead']['p50_ms']} ms")
    print(f"written to {path}")
