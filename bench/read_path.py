"""Read path: GET throughput on a replica through the middleware, divided by the bare app.

Two uvicorn processes serve the same handlers (one wrapped in `ForwarderMiddleware` as a
Litestream replica, one bare); each round, one `wrk` per server loads both at the same time (so
both see the same moment of a shared machine), which starts first alternating, and the ratio of
median throughputs is reported. Two handlers: `/rows` (a fresh
read-only SQLite connection and a query, what a replica read is) and `/hello` (nothing, the
worst case for the middleware's share).

Each round is one A/B pair; its ratio cancels the machine's drift. Rounds go on (at least
`--rounds`, at most `--max-rounds`) until the spread of the median paired ratio, the half-width
of its 95 % bootstrap interval, is under `TARGET_SPREAD`; the spread is reported either way.

    .venv/bin/python -m bench.read_path [--rounds 8 --max-rounds 40 --seconds 1]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.servers import uvicorn_server
from bench.stats import report

COLUMNS = [
    "handler",
    "bare req/s (median)",
    "forwarder req/s (median)",
    "ratio of medians",
    "paired ratio (median)",
    "spread (95 % CI half-width)",
    "paired ratio (min-max)",
    "rounds",
    "load",
]
TARGET_SPREAD = 0.03
APP = "bench.apps.read_app:app"
PATHS = ("/rows", "/hello")


def spread(ratios: list[float], resamples: int = 2000) -> float:
    """Half-width of the 95 % bootstrap interval of the median of `ratios` (fixed seed: reproducible)."""
    rng = random.Random(16)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return (medians[int(0.975 * resamples) - 1] - medians[int(0.025 * resamples)]) / 2


def paired_rounds(
    urls: dict[str, str], path: str, rounds: int, max_rounds: int, seconds: float, connections: int
) -> dict[str, Any]:
    """Load `path` on the "bare" and the "forwarder" server at the same time, round after round (which
    starts first alternating), at least `rounds` and until the spread is under `TARGET_SPREAD` (at most
    `max_rounds`); one report row."""
    samples: dict[str, list[float]] = {"bare": [], "forwarder": []}
    for name in samples:
        wrk(urls[name] + path, 1, connections)  # warm up
    load = os.getloadavg()[0]
    paired: list[float] = []
    for i in range(max(rounds, max_rounds)):
        if i >= rounds and spread(paired) < TARGET_SPREAD:
            break
        order = ["bare", "forwarder"] if i % 2 == 0 else ["forwarder", "bare"]
        for name, rate in zip(
            order, wrk_together([urls[name] + path for name in order], seconds, connections), strict=True
        ):
            samples[name].append(rate)
        # A and B ran at the same time in this round: their ratio cancels the machine's drift.
        paired.append(samples["forwarder"][-1] / samples["bare"][-1])
    bare, ours = statistics.median(samples["bare"]), statistics.median(samples["forwarder"])
    half_width = spread(paired)
    paired.sort()
    return {
        "handler": path,
        "bare req/s (median)": round(bare),
        "forwarder req/s (median)": round(ours),
        "ratio of medians": round(ours / bare, 3),
        "paired ratio (median)": round(statistics.median(paired), 3),
        "spread (95 % CI half-width)": round(half_width, 3),
        "paired ratio (min-max)": f"{paired[0]:.2f}-{paired[-1]:.2f}",
        "rounds": len(paired),
        "load": round(load, 2),
        "samples": samples,
    }


def wrk(url: str, seconds: float, connections: int) -> float:
    return wrk_together([url], seconds, connections)[0]


def wrk_together(urls: list[str], seconds: float, connections: int) -> list[float]:
    """One wrk per URL, all at once: each A/B pair then sees the same moment of the shared machine."""
    processes = [
        subprocess.Popen(
            ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for url in urls
    ]
    rates = []
    for process in processes:
        out, err = process.communicate(timeout=seconds + 30)
        match = re.search(r"Requests/sec:\s+([\d.]+)", out)
        if process.returncode != 0 or not match:
            raise RuntimeError(f"cannot read wrk's output (exit {process.returncode}):\n{out}\n{err}")
        rates.append(float(match.group(1)))
    return rates


def make_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, text TEXT)")
    conn.executemany("INSERT INTO items (text) VALUES (?)", [(f"item {i}",) for i in range(200)])
    conn.commit()
    conn.close()
    Path(f"{path}-txid").write_text(f"{1:016x}\n")


def run(rounds: int, seconds: float, connections: int, max_rounds: int | None = None) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("the read-path benchmark needs wrk: apt-get install wrk")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        database = Path(tmp) / "app.db"
        make_database(database)
        urls = {
            name: stack.enter_context(
                uvicorn_server(APP, {"BENCH_WRAPPED": wrapped, "BENCH_DATABASE": str(database)}, "/hello")
            )
            for name, wrapped in (("bare", "0"), ("forwarder", "1"))
        }
        rows = [paired_rounds(urls, path, rounds, max_rounds or rounds, seconds, connections) for path in PATHS]
    return {"rows": rows, "rounds": rounds, "seconds": seconds, "connections": connections}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="read-path throughput, middleware vs bare app")
    parser.add_argument("--rounds", type=int, default=8, help="at least this many A/B rounds")
    parser.add_argument("--max-rounds", type=int, default=40, help="at most this many, until the spread is small")
    parser.add_argument("--seconds", type=float, default=1)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    result = run(args.rounds, args.seconds, args.connections, args.max_rounds)
    report("read_path", result, result["rows"], COLUMNS)
