"""Traffic and checks of the chaos scenarios: loopback only, bounded in count and time, every write by id."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from forwarder.dev import Cluster
from forwarder.replica.txid_file import read_txid_file


@dataclass
class Tally:
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    acknowledged: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # 503 with Retry-After: must never be applied
    allowed_503: int = 0
    while_down: Counter[str] = field(default_factory=Counter)  # 502 (edge replay) / 504 (in flight) while down
    ryw_checked: int = 0

    def summary(self) -> str:
        return (
            f"requests {self.requests}, errors {dict(self.errors) or 0}, 503 while primary down {self.allowed_503}, "
            f"other while down {dict(self.while_down) or 0}, "
            f"writes acknowledged {len(self.acknowledged)}, read-your-writes checks {self.ryw_checked}"
        )


async def traffic(
    cluster: Cluster,
    tally: Tally,
    *,
    total: int,
    concurrency: int,
    primary_down: Callable[[], bool] = lambda: False,
    targets: Callable[[], list[str]] | None = None,
    deadline: float = 600.0,
) -> None:
    """`total` requests, 80 % reads, 20 % writes (each write then read back on the same node), at
    `concurrency`, through the replicas and the edge. Counts every outcome into `tally`."""
    remaining = [total]
    stop_at = time.monotonic() + deadline

    def alive() -> list[str]:
        return [n.url for n in cluster.replicas if targets is None or n.url in targets()]

    def pick() -> str:
        urls = targets() if targets else [n.url for n in cluster.replicas] + [cluster.edge_url or cluster.primary.url]
        return random.choice(urls)

    async def worker() -> None:
        # keep-alive shorter than uvicorn's 5 s: no request on a connection the server is closing
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(keepalive_expiry=1.0)) as client:
            while remaining[0] > 0 and time.monotonic() < stop_at:
                remaining[0] -= 1
                base = pick()
                try:
                    if random.random() < 0.2:
                        await write_then_read(client, base)
                    else:
                        response = await client.get(f"{base}/items/{random.choice(tally.acknowledged or ['none'])}")
                        tally.requests += 1
                        judge(response, None)
                except httpx.HTTPError as exc:
                    if primary_down() or (targets is not None and base not in targets()):
                        tally.while_down[f"in flight at kill: {type(exc).__name__}"] += 1
                    else:
                        tally.errors[f"client {type(exc).__name__}"] += 1

    def judge(response: httpx.Response, item: str | None) -> bool:
        if response.status_code == 200:
            return True
        if response.status_code == 503 and "retry-after" in response.headers and primary_down():
            tally.allowed_503 += 1
            if item is not None:
                tally.refused.append(item)
            return False
        if response.status_code in (502, 504) and primary_down():
            # 504: the write was in flight when the primary died (outcome unknown, never retried);
            # 502: the edge, like Fly's proxy, could not replay to the dead primary (no fallback).
            tally.while_down[f"{response.request.method} {response.status_code}"] += 1
            return False
        tally.errors[f"{response.request.method} {response.status_code}"] += 1
        return False

    async def write_then_read(client: httpx.AsyncClient, base: str) -> None:
        item = uuid.uuid4().hex
        response = await client.post(f"{base}/items/{item}")
        tally.requests += 1
        if not judge(response, item):
            return
        tally.acknowledged.append(item)
        # Read it back on the node that answered, with the cookie the write set.
        node = response.headers.get("forwarder-node")
        url = next((n.url for n in cluster.nodes if n.id == node), base) if base == cluster.edge_url else base
        if url == cluster.primary.url:  # answered by the primary: read it back on a replica
            url = random.choice(alive())
        while True:
            try:
                check = await client.get(f"{url}/items/{item}")
                break
            except httpx.TransportError:
                if url in alive():
                    raise
                # That replica was killed meanwhile: read back on another one, with the same cookie.
                tally.while_down[f"read-back on a killed replica: {url}"] += 1
                url = random.choice(alive())
        tally.requests += 1
        if judge(check, None):
            tally.ryw_checked += 1
            if check.json()["count"] < 1:
                tally.errors["read-your-writes violated"] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def ids(database: Path) -> Counter[str]:
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as db:
        return Counter(row[0] for row in db.execute("SELECT id FROM items"))


async def converge(cluster: Cluster, limit: float = 60.0) -> float:
    """Seconds until every replica's copy holds the primary's txid (raises after `limit`)."""
    started = time.monotonic()
    target = await cluster.replicator.txid()
    while True:
        positions = [read_txid_file(n.database.with_name(n.database.name + "-txid")) or 0 for n in cluster.replicas]
        if all(p >= target for p in positions):
            return time.monotonic() - started
        if time.monotonic() - started > limit:
            raise AssertionError(f"replicas at {positions} did not reach {target} within {limit:g}s")
        await asyncio.sleep(0.05)


def check_writes(cluster: Cluster, tally: Tally) -> dict[str, int]:
    """Lost, doubled and applied-503 writes on the primary; every replica equal to the primary."""
    on_primary = ids(cluster.primary.database)
    lost = sum(1 for item in tally.acknowledged if on_primary[item] == 0)
    doubled = sum(1 for item in tally.acknowledged if on_primary[item] > 1)
    applied_503 = sum(1 for item in tally.refused if on_primary[item] > 0)
    differing = [n.id for n in cluster.replicas if ids(n.database) != on_primary]
    return {
        "checked": len(tally.acknowledged),
        "lost": lost,
        "doubled": doubled,
        "503 applied": applied_503,
        "replicas differing": len(differing),
    }


def restores(cluster: Cluster) -> int:
    return sum(n.follower.restores for n in cluster.replicas if n.follower is not None)


def holds_lock(pid: int) -> bool:
    """Whether process `pid` holds a POSIX lock (a follower in the middle of applying a batch)."""
    with open("/proc/locks", encoding="ascii") as locks:
        return any(
            len(fields := [f for f in line.split() if f != "->"]) > 4 and fields[4] == str(pid) and "->" not in line
            for line in locks
        )
