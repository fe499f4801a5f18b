"""What durable at-most-once costs per RPC call: `SQLiteSeenCalls.claim` and a whole signed call.

.venv/bin/python -m bench.rpc_seen [calls]

Measures, on a primary over a real SQLite file (WAL, the primary's pragmas), the claim alone
(insert + commit of the request id, in a worker thread) and a whole in-process RPC call
(`POST /_forwarder/rpc/<name>`: signature, body, claim, function, commit position) with the ids
in the database versus in memory.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from forwarder import Forwarder, ForwarderMiddleware, MemoryEngine, MemoryLog, Registry, Role, Topology
from forwarder.rpc.seen import MemorySeenCalls
from forwarder.rpc.signing import sign

SECRET = "bench-secret"


def _summary(samples: list[float]) -> str:
    samples = sorted(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return f"median {statistics.median(samples) * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us (n={len(samples)})"


async def _calls(forwarder: Forwarder, calls: int) -> list[float]:
    app = ForwarderMiddleware(lambda scope, receive, send: None, forwarder=forwarder)  # type: ignore[arg-type, return-value]
    body = b'{"args":[],"kwargs":{}}'
    path = "/_forwarder/rpc/noop"
    took = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p") as client:
        for _ in range(calls):
            headers = {"forwarder-signature": sign(SECRET.encode(), "POST", path, body)}
            started = time.perf_counter()
            response = await client.post(path, content=body, headers=headers)
            took.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    return took


async def main(calls: int) -> None:
    registry = Registry()

    @registry.primary_only(name="noop")
    async def noop() -> None:
        return None

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "app.db"

        def node(database: Path | None) -> Forwarder:
            return Forwarder(
                engine=MemoryEngine(MemoryLog(), Role.PRIMARY),
                topology=Topology("p", "fra", Role.PRIMARY),
                secret=SECRET,
                registry=registry,
                database=str(database) if database else None,
            )

        async with node(db) as forwarder:
            claims = []
            for _ in range(calls):
                started = time.perf_counter()
                await forwarder.seen_calls.claim(uuid.uuid4().hex, int(time.time()) + 61)
                claims.append(time.perf_counter() - started)
            print(f"claim (insert + commit, SQLite WAL): {_summary(claims)}")
            print(f"whole RPC call, ids in SQLite:      {_summary(await _calls(forwarder, calls))}")
        memory = node(None)
        assert isinstance(memory.seen_calls, MemorySeenCalls)
        async with memory:
            print(f"whole RPC call, ids in memory:      {_summary(await _calls(memory, calls))}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
