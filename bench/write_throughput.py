"""Forwarded-write throughput: writes sent to two replicas against the same writes sent to the primary.

At each concurrency (connections per source: 1, 8, 32), `wrk` runs two threads; in the forwarded
runs one thread loads each replica (which forwards to the primary and waits for its own replica to
hold the write), in the direct runs both load the primary. Every request must get its 201: a run
with any error or timeout stops the benchmark. Direct and forwarded runs alternate,
and each figure is the median of the rounds; latencies are wrk's p50/p99 over each run's requests.

    .venv/bin/python -m bench.write_throughput [--rounds 3 --seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.local_cluster import cpu_seconds, cpu_used, on_cluster
from bench.stats import report, run_median
from forwarder.dev import Cluster

SCRIPT = Path(__file__).with_name("post_write.lua")
CONCURRENCY = (1, 8, 32)
COLUMNS = [
    "connections per source",
    "direct req/s",
    "forwarded req/s",
    "forwarded / direct",
    "direct p50 / p99 ms",
    "forwarded p50 / p99 ms",
    "direct CPU ms/write",
    "forwarded CPU ms/write",
    "primary app CPU ms/write (direct, forwarded)",
    "primary-bound forwarded / direct",
    "requests",
]
PRIMARY_GROUPS = ("primary app",)
"""The primary's app process: what a forwarded write costs the primary's machine per write (its Litestream
costs per second, a sync every monitor interval whatever the rate, and the followers run on the replicas')."""


def cpu_per_write(runs: list[dict[str, Any]], groups: tuple[str, ...] | None = None) -> float:
    """Median over runs of the CPU the cluster's processes (all, or those of `groups`) spent per write."""
    return round(
        float(
            statistics.median(
                sum(ms for group, ms in run["cpu_ms_per_write"].items() if groups is None or group in groups)
                for run in runs
            )
        ),
        3 if groups else 2,
    )


async def wrk(targets: list[str], connections: int, seconds: float) -> dict[str, Any]:
    """One wrk run of POSTs, `connections` per target, each target on its own thread."""
    hosts = ",".join(urlsplit(url).netloc for url in targets)
    process = await asyncio.create_subprocess_exec(
        "wrk",
        f"-t{len(targets)}",
        f"-c{connections * len(targets)}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(SCRIPT),
        f"{targets[0]}/write",
        env={**os.environ, "WRK_TARGETS": hosts},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    for line in out.decode().splitlines():
        if line.startswith("WRK_JSON "):
            result: dict[str, Any] = json.loads(line.removeprefix("WRK_JSON "))
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            failed = {k: v for k, v in result.items() if (k.endswith("_errors") or k == "timeouts") and v}
            if failed:
                # A throughput made of errors is no throughput: stop rather than report it.
                raise RuntimeError(f"wrk against {hosts} got {failed} of {result['requests']} requests")
            return result
    raise RuntimeError(f"wrk printed no summary (exit {process.returncode}):\n{out.decode()}\n{err.decode()}")


async def measure(cluster: Cluster, rounds: int, seconds: float) -> list[dict[str, Any]]:
    sources = {"direct": [cluster.primary.url] * 2, "forwarded": [node.url for node in cluster.replicas[:2]]}
    for kind in sources:  # warm up connection pools and code paths
        await wrk(sources[kind], 2, 1)
    rows = []
    for connections in CONCURRENCY:
        runs: dict[str, list[dict[str, Any]]] = {"direct": [], "forwarded": []}
        for i in range(rounds):
            for kind in ("direct", "forwarded") if i % 2 == 0 else ("forwarded", "direct"):
                before = cpu_seconds(cluster)
                result = await wrk(sources[kind], connections, seconds)
                result["cpu_ms_per_write"] = {
                    group: round(1000 * used / result["requests"], 3)
                    for group, used in cpu_used(before, cpu_seconds(cluster)).items()
                }
                runs[kind].append(result)

        median = partial(run_median, runs)

        direct, forwarded = median("direct", "rps"), median("forwarded", "rps")
        # With the replicas on machines of their own, the primary's app does only this much per write:
        # the ratio is the forwarded / direct throughput a primary bound by its app's CPU would allow.
        primary = {kind: cpu_per_write(runs[kind], PRIMARY_GROUPS) for kind in runs}
        rows.append(
            {
                "connections per source": connections,
                "direct req/s": round(direct),
                "forwarded req/s": round(forwarded),
                "forwarded / direct": round(forwarded / direct, 3),
                "direct p50 / p99 ms": f"{median('direct', 'p50_us') / 1000:.1f} / "
                f"{median('direct', 'p99_us') / 1000:.1f}",
                "forwarded p50 / p99 ms": f"{median('forwarded', 'p50_us') / 1000:.1f} / "
                f"{median('forwarded', 'p99_us') / 1000:.1f}",
                "direct CPU ms/write": cpu_per_write(runs["direct"]),
                "forwarded CPU ms/write": cpu_per_write(runs["forwarded"]),
                "primary app CPU ms/write (direct, forwarded)": f"{primary['direct']:.2f}, {primary['forwarded']:.2f}",
                "primary-bound forwarded / direct": round(primary["direct"] / primary["forwarded"], 3),
                "requests": sum(run["requests"] for kind in runs for run in runs[kind]),
                "runs": runs,
            }
        )
    return rows


async def run(rounds: int, seconds: float, cluster: Cluster | None = None) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("the write-throughput benchmark needs wrk: apt-get install wrk")
    rows = await on_cluster(cluster, lambda on: measure(on, rounds, seconds))
    return {"rows": rows, "rounds": rounds, "seconds": seconds}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="forwarded-write throughput from two replicas vs direct writes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3)
    args = parser.parse_args()
    result = asyncio.run(run(args.rounds, args.seconds))
    report("write_throughput", result, result["rows"], COLUMNS)
