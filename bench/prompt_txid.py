"""What the primary's prompt txid (`promise_position`: the newest L0 txid, or `newest + 2`) costs replicas.

Four local clusters (one primary and one replica each, `bench/apps/write_app.py`), all running the
whole time, so each sees the same background load:

- `default`: direct writes get the prompt txid, writes a replica forwarded (proxy) the exact one;
- `exact`: every write gets the exact txid (`BENCH_COMMIT=exact`, as before `promise_position`);
- `files`: the prompt txid from local files only, never one sync-status on a quiet primary
  (`BENCH_COMMIT=files`);
- `prompt`: every write gets the prompt txid, forwarded ones too (`BENCH_COMMIT=prompt`).

Each round runs these, in random order, writes spaced 0-20 ms at random (a quiet primary: where
`newest + 2` most often needs the keeper's write, since the next sync takes the commit alone):

- `read after direct write`: `POST /write` on the primary, then `GET /write/<id>` on the replica
  with the cookie it set; the GET's time is mostly its wait for the cookie's txid (default, exact,
  files);
- `forwarded write`: `POST /write` to the replica, which proxies it and waits (default, prompt):
  total, and the replication wait from `Server-Timing`.

Every read must be served by the replica itself and find its row (else it counts as a miss).

    .venv/bin/python -m bench.prompt_txid [--rounds 100]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from contextlib import AsyncExitStack
from typing import Any

import httpx

from bench.forwarded_write import timings
from bench.local_cluster import local_cluster
from bench.stats import LATENCY, report, summary_ms
from forwarder.dev import Cluster

COLUMNS = ["measure", *LATENCY]


async def read_after_write(client: httpx.AsyncClient, cluster: Cluster, text: str) -> tuple[float, bool]:
    """A direct write on the primary, then the read of it on the replica with the cookie: (read s, hit)."""
    client.cookies.clear()
    response = await client.post(f"{cluster.primary.url}/write", content=text)
    assert response.status_code == 201, response.text
    row_id = response.json()["id"]
    replica = cluster.replicas[0]
    started = time.perf_counter()
    read = await client.get(f"{replica.url}/write/{row_id}")
    elapsed = time.perf_counter() - started
    return elapsed, read.status_code == 200 and read.headers.get("forwarder-node") == replica.id


async def forwarded_write(client: httpx.AsyncClient, cluster: Cluster, text: str) -> tuple[float, float, bool]:
    """A write sent to the replica (proxied to the primary, then waited for): (total s, wait s, hit); the
    wait is the primary's for its txid (`commit_position`: the exact one waits for Litestream's file)
    and the replica's for that txid."""
    client.cookies.clear()
    replica = cluster.replicas[0]
    started = time.perf_counter()
    response = await client.post(f"{replica.url}/write", content=text)
    total = time.perf_counter() - started
    assert response.status_code == 201, response.text
    t = timings(response)
    wait = t.get("commit", float("nan")) + t.get("replication", float("nan"))
    read = await client.get(f"{replica.url}/write/{response.json()['id']}")
    return total, wait, read.status_code == 200 and read.headers.get("forwarder-node") == replica.id


async def measure(rounds: int) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        clusters = {
            "default": await stack.enter_async_context(local_cluster(replicas=1)),
            "exact": await stack.enter_async_context(local_cluster(replicas=1, env={"BENCH_COMMIT": "exact"})),
            "files": await stack.enter_async_context(local_cluster(replicas=1, env={"BENCH_COMMIT": "files"})),
            "prompt": await stack.enter_async_context(local_cluster(replicas=1, env={"BENCH_COMMIT": "prompt"})),
        }
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=30))
        kinds = [
            ("read", "default"),
            ("read", "exact"),
            ("read", "files"),
            ("forward", "default"),
            ("forward", "prompt"),
        ]
        samples: dict[str, list[float]] = {}
        misses: dict[str, int] = {}
        for name in ("read after direct write", "forwarded write: total", "forwarded write: replication wait"):
            for setup in ("default", "exact", "files", "prompt"):
                samples[f"{name} ({setup})"] = []
        for i in range(-10, rounds):  # 10 rounds of warm-up
            order = list(kinds)
            random.shuffle(order)
            for kind, setup in order:
                await asyncio.sleep(random.uniform(0, 0.02))
                text = f"{kind} {setup} {i}"
                if kind == "read":
                    elapsed, hit = await read_after_write(client, clusters[setup], text)
                    values = [("read after direct write", elapsed)]
                else:
                    total, wait, hit = await forwarded_write(client, clusters[setup], text)
                    values = [("forwarded write: total", total), ("forwarded write: replication wait", wait)]
                if i < 0:
                    continue
                for name, value in values:
                    samples[f"{name} ({setup})"].append(value)
                if not hit:
                    misses[f"{kind} ({setup})"] = misses.get(f"{kind} ({setup})", 0) + 1
        rows = [{"measure": name, **summary_ms(values)} for name, values in samples.items() if values]
        return {"rows": rows, "rounds": rounds, "misses": misses}


def run(rounds: int) -> dict[str, Any]:
    return asyncio.run(measure(rounds))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="what the prompt txid costs the replicas")
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    result = run(args.rounds)
    report("prompt_txid", result, result["rows"], COLUMNS)
    print("misses (read not served by the replica, or row missing):", result["misses"] or "none")
