"""Run every benchmark, then write `bench/results/latest.json` and `bench/results/latest.md`.

.venv/bin/python -m bench [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from bench import forwarded_write, read_path, wake
from bench.stats import RESULTS, machine, table


def main() -> None:
    parser = argparse.ArgumentParser(description="run every forwarder benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run, not for the README)")
    args = parser.parse_args()
    rounds = 40 if args.quick else 200
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    print("wake latency...", flush=True)
    results["wake"] = asyncio.run(wake.main(rounds, 1.0 if args.quick else 2.0))
    print("read path...", flush=True)
    results["read_path"] = read_path.run(2 if args.quick else 9, 2 if args.quick else 3, 16)
    print("forwarded writes...", flush=True)
    results["forwarded_write"] = asyncio.run(forwarded_write.run(rounds))
    results["seconds"] = round(time.monotonic() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = render(results)
    (RESULTS / "latest.md").write_text(markdown)
    print(markdown)


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    many = results["wake"]["ten_thousand_waiters"]
    read_rows = [{k: v for k, v in row.items() if k != "samples"} for row in results["read_path"]["rows"]]
    overhead = results["forwarded_write"]["overhead"]
    return "\n".join(
        [
            f"Machine: {m['cpus']} CPUs, Python {m['python']}, {m['platform']}; run took {results['seconds']} s.",
            "",
            "**Catch-up wake** (engine signal to waiting coroutine resumed, ms)",
            "",
            table(results["wake"]["wake"], ["mechanism", "n", "p50_ms", "p99_ms", "max_ms"]),
            "",
            f"10,000 waiters: idle CPU {many['tracker_idle_cpu_percent']} % (per-waiter polling at 50 ms: "
            f"{many['poll50_idle_cpu_percent']} %); one change wakes all in {many['tracker_wake_all_10000_ms']} ms "
            f"(polling: {many['poll50_wake_all_10000_ms']} ms).",
            "",
            "**Read path** (GET throughput on a replica, middleware / bare app, wrk, A/B alternating)",
            "",
            table(read_rows, read_path.COLUMNS),
            "",
            "**Forwarded write** (real 3-node cluster, Litestream, loopback, ms)",
            "",
            table(results["forwarded_write"]["rows"], ["measure", "n", "p50_ms", "p99_ms", "max_ms"]),
            "",
            f"Overhead beyond (direct write on the primary + replication wait), p50: {overhead['p50_ms']} ms.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
