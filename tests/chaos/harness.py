"""Traffic and checks of the chaos scenarios: loopback only, bounded in count and time, every write by id.

How answers are counted (`Tally`): a 200 is a success; a `503` with `Retry-After` while the primary
is down is the one allowed refusal, and its write must never be applied. A request that was in
flight when its process was killed (sent before `Fault.at`, or within `STALE_GRACE` after) has
an unknown outcome: `504` from a replica (the write reached the primary, no answer came back),
`502` from the edge (as Fly's proxy answers when the node it delivered to dies mid-request),
or a broken connection to the killed node itself. Such a write may or may not have run; it is
counted apart, and must be applied at most once. Everything else, including any of those for a
request sent later, is an error.
"""

from __future__ import annotations

import asyncio
import random
import re
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

WRITES = 0.2
"""Share of requests that write (then read back): half forwarded `POST /items`, half `@primary_only` RPC."""


STALE_GRACE = 0.1
"""Seconds after a death in which a broken keep-alive connection to the dead node still counts as in flight."""


@dataclass
class Fault:
    """A killed process: when it was gone (monotonic), which URLs it served, whether the primary counts as down."""

    at: float | None = None
    urls: frozenset[str] = frozenset()
    primary_down: bool = False

    def kill(self, *urls: str, primary: bool = False) -> None:
        """Call just before the kill signal; then `died()` once the process is gone."""
        self.at, self.urls, self.primary_down = time.monotonic(), frozenset(urls), primary

    def died(self) -> None:
        """The process has exited: a request sent from now on reached no part of it."""
        self.at = time.monotonic()

    def in_flight(self, sent: float) -> bool:
        """Whether a request sent at `sent` may have been under way in the process when it died.

        Up to `STALE_GRACE` after the death too: a replica may still send a forwarded call on a
        keep-alive connection to the dead node before it has seen that connection close, and gets a
        reset it cannot tell from a crash mid-request (seen once: an RPC sent 4 ms after the reap)."""
        return self.at is not None and sent < self.at + STALE_GRACE


@dataclass
class Tally:
    requests: Counter[str] = field(default_factory=Counter)  # by kind: read, write, rpc, read-back
    errors: Counter[str] = field(default_factory=Counter)
    acknowledged: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # 503 with Retry-After: must never be applied
    allowed_503: int = 0
    unknown: Counter[str] = field(default_factory=Counter)  # in flight at a kill, by answer
    unknown_writes: list[str] = field(default_factory=list)  # may have run: at most once
    stale: int = 0  # acknowledged with Forwarder-Stale: 1 (the replica was behind)
    rpc_acknowledged: int = 0
    ryw_checked: int = 0
    answers: list[tuple[float, float]] = field(default_factory=list)  # (sent, answered), monotonic
    violations: list[dict[str, str]] = field(default_factory=list)  # what an error or a failed read-back saw

    def answered_between(self, start: float, end: float) -> list[float]:
        """Latencies of the answers that came back between `start` and `end`."""
        return [answered - sent for sent, answered in self.answers if start <= answered < end]

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def summary(self) -> str:
        return (
            f"requests {self.total} {dict(self.requests)}, errors {dict(self.errors) or 0}, "
            f"503 + Retry-After while the primary was down {self.allowed_503}, "
            f"in flight at the kill (outcome unknown) {dict(self.unknown) or 0}, "
            f"writes acknowledged {len(self.acknowledged)} (RPC {self.rpc_acknowledged}, stale {self.stale}), "
            f"read-your-writes checks {self.ryw_checked}"
        )


async def traffic(
    cluster: Cluster,
    tally: Tally,
    *,
    total: int,
    concurrency: int,
    fault: Fault | None = None,
    targets: Callable[[], list[str]] | None = None,
    deadline: float = 600.0,
    stop: asyncio.Event | None = None,
) -> None:
    """`total` requests at `concurrency`: 80 % reads through the replicas and the edge, 20 % writes
    (forwarded POSTs and RPC calls from replicas, each read back on the node that answered).
    `targets` narrows where requests go (a node being killed leaves it). It ends after `deadline`
    seconds, or once `stop` is set. Counts all into `tally`."""
    remaining = [total]
    stop_at = time.monotonic() + deadline
    fault = fault or Fault()

    def replicas() -> list[str]:
        return [n.url for n in cluster.replicas if targets is None or n.url in targets()]

    def pick() -> str:
        urls = targets() if targets else [n.url for n in cluster.replicas] + [cluster.edge_url or cluster.primary.url]
        return random.choice(urls)

    async def worker() -> None:
        # keep-alive shorter than uvicorn's 5 s: no request on a connection the server is closing
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(keepalive_expiry=1.0)) as client:
            while remaining[0] > 0 and time.monotonic() < stop_at and not (stop is not None and stop.is_set()):
                remaining[0] -= 1
                draw = random.random()
                base = random.choice(replicas()) if draw < WRITES / 2 else pick()
                sent = time.monotonic()
                try:
                    if draw < WRITES / 2:
                        await write_then_read(client, base, rpc=True)
                    elif draw < WRITES:
                        await write_then_read(client, base, rpc=False)
                    else:
                        tally.requests["read"] += 1
                        response = await client.get(f"{base}/items/{random.choice(tally.acknowledged or ['none'])}")
                        judge(response, None, sent)
                except httpx.HTTPError as exc:
                    broken(exc, base, sent, None)

    def broken(exc: httpx.HTTPError, base: str, sent: float, item: str | None) -> None:
        """No answer at all: the connection to a node killed with this request under way, else an error."""
        if fault.in_flight(sent) and base in fault.urls:
            tally.unknown[f"connection to the killed node: {type(exc).__name__}"] += 1
            if item is not None:
                tally.unknown_writes.append(item)
        else:
            tally.errors[f"client {type(exc).__name__}"] += 1

    def judge(response: httpx.Response, item: str | None, sent: float) -> bool:
        tally.answers.append((sent, time.monotonic()))
        status = response.status_code
        if status == 200:
            return True
        if status == 503 and "retry-after" in response.headers and fault.primary_down:
            tally.allowed_503 += 1
            if item is not None:
                tally.refused.append(item)
            return False
        from_edge = str(response.request.url).startswith(cluster.edge_url or "-")
        if (status == 504 or (status == 502 and from_edge)) and fault.in_flight(sent):
            tally.unknown[f"{response.request.method} {status}{' (edge)' if from_edge else ''}"] += 1
            if item is not None:
                tally.unknown_writes.append(item)
            return False
        kind = f"{response.request.method} {response.request.url.path.split('/')[1]} {status}"
        tally.errors[kind] += 1
        if len(tally.violations) < 10:  # what it was, for the failure message
            since = "" if fault.at is None else f", sent {sent - fault.at:+.3f}s after the kill"
            tally.violations.append({kind: f"{_shown(response)}{since}: {response.text[:300]}"})
        return False

    async def write_then_read(client: httpx.AsyncClient, base: str, *, rpc: bool) -> None:
        item = uuid.uuid4().hex
        sent = time.monotonic()
        tally.requests["rpc" if rpc else "write"] += 1
        try:
            response = await client.post(f"{base}/rpc/items/{item}" if rpc else f"{base}/items/{item}")
        except httpx.HTTPError as exc:
            broken(exc, base, sent, item)
            return
        if not judge(response, item, sent):
            return
        tally.acknowledged.append(item)
        tally.rpc_acknowledged += rpc
        tally.stale += response.headers.get("forwarder-stale") == "1"
        # Read it back on the node that answered, with the cookie the write set.
        node = response.headers.get("forwarder-node")
        url = next((n.url for n in cluster.nodes if n.id == node), base) if base == cluster.edge_url else base
        if url == cluster.primary.url:  # answered by the primary: read it back on a replica
            url = random.choice(replicas())
        while True:
            sent = time.monotonic()
            tally.requests["read-back"] += 1
            try:
                check = await client.get(f"{url}/items/{item}")
                break
            except httpx.TransportError:
                if url in replicas():
                    raise
                # That replica was killed meanwhile: read back on another one, with the same cookie.
                tally.requests["read-back"] -= 1
                tally.requests["read-back moved off a killed replica"] += 1
                url = random.choice(replicas())
        if judge(check, None, sent):
            tally.ryw_checked += 1
            if check.json()["count"] < 1:
                tally.errors["read-your-writes violated"] += 1
                tally.violations.append(
                    {
                        "item": item,
                        "write": f"{'rpc' if rpc else 'write'} via {base}: {_shown(response)}",
                        "read": f"{url}: {_shown(check)}",
                    }
                )

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def _shown(response: httpx.Response) -> str:
    headers = ("forwarder-node", "forwarder-txid", "forwarder-stale", "forwarder-forwarded", "set-cookie")
    shown = {name: response.headers[name] for name in headers if name in response.headers}
    cookie = response.request.headers.get("cookie")
    return f"{response.status_code} {shown} (request cookie {cookie})"


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
    differing = [n.id for n in cluster.replicas if ids(n.database) != on_primary]
    return {
        "checked": len(tally.acknowledged),
        "lost": sum(1 for item in tally.acknowledged if on_primary[item] == 0),
        "doubled": sum(1 for count in on_primary.values() if count > 1),  # any write, acknowledged or not
        "503 applied": sum(1 for item in tally.refused if on_primary[item] > 0),
        "outcome unknown": len(tally.unknown_writes),
        "outcome unknown, applied": sum(1 for item in tally.unknown_writes if on_primary[item] > 0),
        "replicas differing": len(differing),
    }


def report(
    name: str, tally: Tally, checks: dict[str, int], converge_s: float, cluster: Cluster, **more: object
) -> None:
    """One line of figures per scenario (pytest -s shows it)."""
    figures = [tally.summary(), str(checks), f"converged in {converge_s:.2f}s", f"re-restores {restores(cluster)}"]
    figures += [f"{key.replace('_', ' ')} {value}" for key, value in more.items()]
    print(f"\n[{name}] " + "; ".join(figures))


async def finish(name: str, cluster: Cluster, tally: Tally, *, fault: Fault | None = None, **more: object) -> None:
    """Wait for the replicas to converge, print the figures, and check the pass criteria."""
    converge_s = await converge(cluster)
    checks = check_writes(cluster, tally)
    latency = latencies([answered - sent for sent, answered in tally.answers])
    report(
        name, tally, checks, converge_s, cluster, latency=latency, replicas=dict(await replica_metrics(cluster)), **more
    )
    assert tally.errors == {}, (tally.errors, tally.violations)
    assert checks["lost"] == checks["doubled"] == checks["503 applied"] == checks["replicas differing"] == 0, checks
    assert tally.ryw_checked == len(tally.acknowledged)
    assert tally.rpc_acknowledged > 0  # RPC calls were part of the mix
    if fault is None:
        assert tally.unknown == {} and tally.allowed_503 == 0  # nothing was down: every answer a 200


def latencies(seconds: list[float]) -> str:
    """Count, median, p99 and max of answer times."""
    if not seconds:
        return "none"
    ordered = sorted(seconds)
    median, p99 = ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)]
    figures = f"median {median * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms"
    return f"{len(ordered)} answers, {figures}"


def restores(cluster: Cluster) -> int:
    return sum(n.follower.restores for n in cluster.replicas if n.follower is not None)


def holds_lock(pid: int) -> bool:
    """Whether process `pid` holds a POSIX lock (a follower in the middle of applying a batch)."""
    with open("/proc/locks", encoding="ascii") as locks:
        return any(
            len(fields := [f for f in line.split() if f != "->"]) > 4 and fields[4] == str(pid) and "->" not in line
            for line in locks
        )


_LABEL = re.compile(r'(reason|cause)="([^"]*)"')


async def replica_metrics(cluster: Cluster) -> Counter[str]:
    """Across the replicas: requests they sent to the primary by reason, and replication waits that timed out."""
    totals: Counter[str] = Counter()
    kinds = {
        "forwarder_forwarded_requests_total{": "forwarded",
        "forwarder_replication_wait_timeouts_total{": "wait timeouts",
    }
    async with httpx.AsyncClient(timeout=5) as client:
        for node in cluster.replicas:
            for line in (await client.get(f"{node.url}/_forwarder/metrics")).text.splitlines():
                name, _, value = line.rpartition(" ")
                kind = next((k for prefix, k in kinds.items() if name.startswith(prefix)), None)
                label = _LABEL.search(name)
                if kind is not None and label is not None:
                    totals[f"{kind} ({label.group(2)})"] += int(float(value))
    return totals
