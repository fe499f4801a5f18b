"""Run every benchmark, then write `bench/results/latest.json`, `latest.md` and the PNG charts.

.venv/bin/python -m bench [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

from bench import (
    charts,
    commit_position,
    engine_lag,
    forwarded_write,
    node_channel,
    primary_cost,
    profile_hop,
    read_instructions,
    read_path,
    server_stack,
    sqlmodel_read,
    wake,
    write_throughput,
)
from bench.local_cluster import local_cluster
from bench.stats import LATENCY, RESULTS, machine, table


async def cluster_benchmarks(quick: bool) -> dict[str, Any]:
    """The benchmarks that need the local cluster, on one cluster (lightest load first)."""
    rounds = 40 if quick else 300
    out: dict[str, Any] = {}
    async with local_cluster() as cluster:
        print("forwarded-write latency...", flush=True)
        out["forwarded_write"] = await forwarded_write.run(rounds, cluster)
        print("engine lag...", flush=True)
        out["engine_lag"] = await engine_lag.run(40 if quick else 200, cluster)
        print("profile of the forward hop...", flush=True)
        out["profile_hop"] = await profile_hop.run(100 if quick else 400, cluster)
        print("write throughput...", flush=True)
        out["write_throughput"] = await write_throughput.run(1 if quick else 3, 2 if quick else 4, cluster)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="run every forwarder benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run, not for the README)")
    parser.add_argument(
        "--render-only", action="store_true", help="redraw latest.md and the charts from latest.json, measure nothing"
    )
    args = parser.parse_args()
    if args.render_only:
        publish(json.loads((RESULTS / "latest.json").read_text()))
        return
    started = time.monotonic()
    results: dict[str, Any] = {"machine": {**machine(), "load": round(os.getloadavg()[0], 2)}, "quick": args.quick}
    print("wake latency...", flush=True)
    results["wake"] = asyncio.run(wake.main(40 if args.quick else 300, 1.0 if args.quick else 2.0))
    results["wake"]["ten_thousand_waiters_uvloop"] = wake.ten_thousand_on_uvloop(1.0 if args.quick else 2.0)
    print("read path...", flush=True)
    results["read_path"] = read_path.run(2 if args.quick else 8, 2, 16, max_rounds=2 if args.quick else 16)
    print("read path in instructions...", flush=True)
    results["read_instructions"] = read_instructions.run(100 if args.quick else 200)
    print("SQLModel read...", flush=True)
    results["sqlmodel_read"] = sqlmodel_read.run(2 if args.quick else 8, 2, 16, max_rounds=2 if args.quick else 16)
    results.update(asyncio.run(cluster_benchmarks(args.quick)))
    print("node channel against HTTP...", flush=True)
    results["node_channel"] = asyncio.run(
        node_channel.run(1 if args.quick else 2, 2 if args.quick else 3, 40 if args.quick else 200)
    )
    print("commit position candidates...", flush=True)
    results["commit_position"] = commit_position.run(20 if args.quick else 150)
    print("primary cost...", flush=True)
    results["primary_cost"] = primary_cost.run(1 if args.quick else 4, 1, primary_cost.DEFAULT_SETUPS)
    print("server stack...", flush=True)
    results["server_stack"] = server_stack.run(1 if args.quick else 2, 10 if args.quick else 25, 1 if args.quick else 2)
    results["seconds"] = round(time.monotonic() - started, 1)
    results["load_at_end"] = round(os.getloadavg()[0], 2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    publish(results)


def publish(results: dict[str, Any]) -> None:
    """Write latest.md and the charts from one run's results, and print the markdown."""
    for path in charts.draw(results):
        print(f"chart: {path}")
    markdown = render(results)
    (RESULTS / "latest.md").write_text(markdown)
    print(markdown)


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    many = results["wake"]["ten_thousand_waiters"]
    wake_rows = [{k: v for k, v in row.items() if k != "samples_ms"} for row in results["wake"]["wake"]]
    read_rows = [{k: v for k, v in row.items() if k != "samples"} for row in results["read_path"]["rows"]]
    # Absent from results of runs made before the benchmark existed (--render-only of an old latest.json).
    sqlmodel_rows = [
        {k: v for k, v in row.items() if k != "samples"} for row in results.get("sqlmodel_read", {}).get("rows", [])
    ]
    overhead = results["forwarded_write"]["overhead"]
    throughput = [{k: v for k, v in row.items() if k != "runs"} for row in results["write_throughput"]["rows"]]
    profile = results["profile_hop"]
    return "\n".join(
        [
            f"Machine: {m['cpus']} CPUs, Python {m['python']}, {m['platform']}; run took {results['seconds']} s; "
            f"load average at the start {m.get('load', '?')}, at the end {results.get('load_at_end', '?')}.",
            "",
            *_primary_sections(results),
            "**Catch-up wake** (engine signal to waiting coroutine resumed, ms)",
            "",
            table(wake_rows, ["mechanism", *LATENCY]),
            "",
            f"10,000 waiters: idle CPU {many['tracker_idle_cpu_percent']} % (per-waiter polling at 50 ms: "
            f"{many['poll50_idle_cpu_percent']} %). One change wakes all 10,000 in "
            f"{many['tracker_wake_all_10000_ms']} ms (median of {many['wake_all_repeats']}; max "
            f"{many['tracker_wake_all_10000_max_ms']} ms): inotify delivery "
            f"{many['tracker_wake_all_10000_delivery_median_ms']} ms, `advance()` "
            f"{many['tracker_wake_all_10000_advance_median_ms']} ms, asyncio resuming the tasks "
            f"{many['tracker_wake_all_10000_resume_median_ms']} ms, of which garbage collection "
            f"{many['tracker_wake_all_10000_gc_median_ms']} ms. asyncio's own floor, 10,000 tasks on one "
            f"`asyncio.Event`: {many['asyncio_event_floor_10000_ms']} ms; polling at 50 ms: "
            f"{many['poll50_wake_all_10000_ms']} ms.",
            "",
            *_uvloop_wake(results["wake"].get("ten_thousand_waiters_uvloop")),
            "**Read path** (GET throughput on a replica, middleware / bare app; 2 s rounds, wrk on both at "
            "once, each server and its wrk pinned to a CPU of their own, CPUs swapped every round and which "
            "starts first every other; one paired ratio per two rounds, their geometric mean; rounds until "
            "the spread is under +-0.03)",
            "",
            table(read_rows, read_path.COLUMNS),
            "",
            *_instructions_section(results.get("read_instructions")),
            "**SQLModel read** (FastAPI + SQLModel app: replica through `forwarder.sqlalchemy` / the same app "
            "with SQLAlchemy's default pool on a single node; rounds as for the read path)",
            "",
            table(sqlmodel_rows, read_path.COLUMNS),
            "",
            "**Forwarded write** (write app on a real 3-node cluster, Litestream, loopback, ms)",
            "",
            table(results["forwarded_write"]["rows"], ["measure", *LATENCY]),
            "",
            f"Overhead beyond (direct write on the primary + replication wait: the primary's wait for the LTX and "
            f"the replica's), paired per round, p50: "
            f"{overhead['paired_p50_ms']} ms; one extra hop through a bare uvicorn + httpx proxy, same pairing: "
            f"{overhead['paired_bare_hop_p50_ms']} ms.",
            "",
            "**Engine lag** (Litestream's figure: commit on the primary to the row readable on a replica, ms)",
            "",
            table(results["engine_lag"]["rows"], ["measure", *LATENCY]),
            "",
            "**Write throughput** (wrk, POSTs; forwarded: one wrk thread per replica; direct: both on the primary)",
            "",
            table(throughput, write_throughput.COLUMNS),
            "",
            *_channel_section(results.get("node_channel")),
            f"**Where a forwarded write's CPU goes** (py-spy --gil at {profile['rate']} Hz, {profile['writes']} "
            "writes one at a time; CPU from /proc)",
            "",
            table(profile["rows"], profile_hop.COLUMNS),
            "",
        ]
    )


def _primary_sections(results: dict[str, Any]) -> list[str]:
    """The primary-cost, commit-position and server-stack tables (absent from runs made before them)."""
    out: list[str] = []
    if "primary_cost" in results:
        rows = [{k: v for k, v in row.items() if k != "runs"} for row in results["primary_cost"]["rows"]]
        out += [
            "**Primary cost** (the same write app: bare; with `litestream replicate` and a follower, no forwarder; "
            "as the primary of a forwarder cluster; the same with the exact txid for every write, and with none; "
            "wrk POSTs, one setup at a time with the others paused, order rotating per round; every setup on "
            "the nodes' server stack, uvloop + httptools; each ratio the median of the rounds' own)",
            "",
            table(rows, primary_cost.columns(tuple(results["primary_cost"].get("setups", primary_cost.SETUPS)))),
            "",
        ]
    if "commit_position" in results:
        out += [
            "**Learning a txid that covers a commit** on a Litestream primary (one writer, commits spaced 0-4 ms, "
            "candidates taking turns; every covering-check answer verified against the LTX file of its txid)",
            "",
            table(results["commit_position"]["rows"], commit_position.COLUMNS),
            "",
        ]
    if "server_stack" in results:
        rows = [{k: v for k, v in row.items() if k != "runs"} for row in results["server_stack"]["rows"]]
        out += [
            "**Server stack** (three clusters side by side, order rotating: uvloop + httptools as `forwarder dev` "
            "starts nodes now, uvloop + h11, asyncio + h11)",
            "",
            table(rows, server_stack.COLUMNS),
            "",
        ]
    return out


def _instructions_section(counted: dict[str, Any] | None) -> list[str]:
    """The read path in instructions, and the functions the middleware adds (absent from older runs)."""
    if not counted:
        return []
    added = counted["added_calls"]["/hello"]
    ours = ", ".join(
        f"`{r['function'].removeprefix('forwarder/').replace('.py:', '.')}` {r['calls / request']:g}"
        for r in added
        if not r["function"].startswith("C:")
    )
    builtins = sum(row["calls / request"] for row in added if row["function"].startswith("C:"))
    calls = counted["calls_per_request"]["/hello"]
    return [
        "**Read path in instructions** (the read-path servers on httptools, and the forwarder one on h11 too, "
        f"under `valgrind --tool=callgrind`, counting only {counted['requests']} sequential keep-alive GETs per "
        "path: instructions per request do not move with the machine's neighbours)",
        "",
        table(counted["rows"], read_instructions.COLUMNS),
        "",
        f"Calls per `/hello` in the event loop's thread (a coroutine's resumption counts as a call): bare "
        f"{calls['bare']}, forwarder {calls['forwarder']}. The middleware's: {ours}; and {builtins:g} calls "
        "of built-in functions (dict.get, startswith, ContextVar.set / reset, ...).",
        "",
    ]


def _channel_section(channel: dict[str, Any] | None) -> list[str]:
    if not channel:
        return []
    return [
        "**Node channel against HTTP** (two clusters of a primary and two replicas, one with "
        "`FORWARDER_NODE_CHANNEL=false`; latency: one write to each per round, shuffled, ms; throughput: wrk "
        "from both replicas, the other cluster paused)",
        "",
        table(channel["latency"], ["measure", *LATENCY]),
        "",
        table(channel["rows"], list(channel["rows"][0])),
        "",
    ]


def _uvloop_wake(many: dict[str, Any] | None) -> list[str]:
    if not many:
        return []
    return [
        f"On uvloop (what uvicorn runs with `forwarder[server]`): one change wakes all 10,000 in "
        f"{many['tracker_wake_all_10000_ms']} ms (median of {many['wake_all_repeats']}; max "
        f"{many['tracker_wake_all_10000_max_ms']} ms; `advance()` {many['tracker_wake_all_10000_advance_median_ms']} "
        f"ms, resuming {many['tracker_wake_all_10000_resume_median_ms']} ms); 10,000 tasks on one `asyncio.Event`: "
        f"{many['asyncio_event_floor_10000_ms']} ms.",
        "",
    ]


if __name__ == "__main__":
    main()
