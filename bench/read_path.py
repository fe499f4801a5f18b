"""Read path: GET throughput on a replica through the middleware, divided by the bare app.

Two uvicorn processes serve the same handlers (one wrapped in `ForwarderMiddleware` as a
Litestream replica, one bare); each round, one `wrk` per server loads both at the same time (so
both see the same moment of a shared machine), which starts first alternating, and the ratio of
median throughputs is reported. With two CPUs or more, each server and its wrk run on a CPU of
their own (`pin`), the two sides swapping CPUs round by round; a pair of rounds (one on each
placement) then gives one paired ratio, their geometric mean, which cancels a CPU that is faster
than the other (the host's neighbours). Two handlers: `/rows` (a fresh
read-only SQLite connection and a query, what a replica read is) and `/hello` (nothing, the
worst case for the middleware's share).

Each round is one A/B pair; its ratio cancels the machine's drift. Rounds go on (at least
`--rounds`, at most `--max-rounds`) until the spread of the median paired ratio, the half-width
of its 95 % bootstrap interval, is under `TARGET_SPREAD`; the spread is reported either way.

    .venv/bin/python -m bench.read_path [--rounds 8 --max-rounds 40 --seconds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
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

from bench.servers import SERVER_PIDS, uvicorn_server
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
    cpus = pair_cpus()
    per_round: list[float] = []
    for i in range(max(rounds, max_rounds)):
        if i >= rounds and i % 2 == 0 and spread(paired) < TARGET_SPREAD:
            break
        order = ["bare", "forwarder"] if i % 2 == 0 else ["forwarder", "bare"]
        placed = cpus if (i // 2) % 2 == 0 else cpus[::-1]  # every (start order, CPU) combination in turn
        for name, cpu in zip(order, placed, strict=False):
            pin(SERVER_PIDS[urls[name]], cpu)
        rates = wrk_together([urls[name] + path for name in order], seconds, connections, placed or None)
        for name, rate in zip(order, rates, strict=True):
            samples[name].append(rate)
        # A and B ran at the same time in this round: their ratio cancels the machine's drift.
        per_round.append(samples["forwarder"][-1] / samples["bare"][-1])
        if not cpus:
            paired.append(per_round[-1])
        elif i % 2 == 1:
            # Each side ran on the other CPU in the round before: the geometric mean of the two
            # rounds cancels how much faster one CPU was than the other.
            paired.append(math.sqrt(per_round[-1] * per_round[-2]))
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
        "rounds": len(per_round),
        "load": round(load, 2),
        "samples": samples,
    }


def pair_cpus() -> list[int]:
    """Two CPUs this process may run on, one for each side of an A/B pair; [] with fewer."""
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[:2] if len(allowed) >= 2 else []


def pin(pid: int, cpu: int) -> None:
    """Run every thread of process `pid` on `cpu` alone (threads it starts later inherit that).

    Each side of a pair, server and its wrk, then has a CPU of its own: how the scheduler happens
    to share two CPUs among four busy processes no longer moves the ratio; the sides swap CPUs
    round by round, so a CPU slower than the other (a busy neighbour on the host) cancels out.
    """
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), {cpu})


def wrk(url: str, seconds: float, connections: int) -> float:
    return wrk_together([url], seconds, connections)[0]


def wrk_together(urls: list[str], seconds: float, connections: int, cpus: list[int] | None = None) -> list[float]:
    """One wrk per URL, all at once (the i-th on `cpus[i]`, if given): each A/B pair then sees the
    same moment of the shared machine."""
    processes = [
        subprocess.Popen(
            ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=None if not cpus else functools.partial(os.sched_setaffinity, 0, {cpus[i]}),
        )
        for i, url in enumerate(urls)
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
    parser.add_argument("--seconds", type=float, default=2)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    result = run(args.rounds, args.seconds, args.connections, args.max_rounds)
    report("read_path", result, result["rows"], COLUMNS)
