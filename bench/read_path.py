"""Read path: GET throughput on a replica through the middleware, divided by the bare app.

Two uvicorn processes serve the same handlers (one wrapped in `ForwarderMiddleware` as a
Litestream replica, one bare); `wrk` (a separate process) loads one at a time, A and B
alternating, and the ratio of median throughputs is reported. Two handlers: `/rows` (a fresh
read-only SQLite connection and a query, what a replica read is) and `/hello` (nothing, the
worst case for the middleware's share).

    .venv/bin/python -m bench.read_path [--rounds 5 --seconds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.stats import report

COLUMNS = [
    "handler",
    "bare req/s (median)",
    "forwarder req/s (median)",
    "ratio of medians",
    "paired ratio (median)",
    "paired ratio (min-max)",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(wrapped: bool, database: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BENCH_WRAPPED": "1" if wrapped else "0", "BENCH_DATABASE": str(database)}
    argv = [sys.executable, "-m", "uvicorn", "bench.apps.read_app:app", "--port", str(port), "--no-access-log"]
    argv += ["--log-level", "warning"]
    process = subprocess.Popen(argv, env=env, start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/hello", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"the {'wrapped' if wrapped else 'bare'} server did not start on port {port}")


def wrk(url: str, seconds: float, connections: int) -> float:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    return float(match.group(1))


def make_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, text TEXT)")
    conn.executemany("INSERT INTO items (text) VALUES (?)", [(f"item {i}",) for i in range(200)])
    conn.commit()
    conn.close()
    Path(f"{path}-txid").write_text(f"{1:016x}\n")


def run(rounds: int, seconds: float, connections: int) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("the read-path benchmark needs wrk: apt-get install wrk")
    with tempfile.TemporaryDirectory() as tmp:
        database = Path(tmp) / "app.db"
        make_database(database)
        ports = {"bare": free_port(), "forwarder": free_port()}
        servers = {name: start_server(name == "forwarder", database, port) for name, port in ports.items()}
        try:
            rows = []
            for path in ("/rows", "/hello"):
                samples: dict[str, list[float]] = {"bare": [], "forwarder": []}
                for name in ports:
                    wrk(f"http://127.0.0.1:{ports[name]}{path}", 1, connections)  # warm up
                for i in range(rounds):
                    order = ["bare", "forwarder"] if i % 2 == 0 else ["forwarder", "bare"]
                    for name in order:
                        samples[name].append(wrk(f"http://127.0.0.1:{ports[name]}{path}", seconds, connections))
                bare, ours = statistics.median(samples["bare"]), statistics.median(samples["forwarder"])
                # A and B ran back to back in each round: their ratio cancels the machine's drift.
                paired = sorted(b / a for a, b in zip(samples["bare"], samples["forwarder"], strict=True))
                rows.append(
                    {
                        "handler": path,
                        "bare req/s (median)": round(bare),
                        "forwarder req/s (median)": round(ours),
                        "ratio of medians": round(ours / bare, 3),
                        "paired ratio (median)": round(statistics.median(paired), 3),
                        "paired ratio (min-max)": f"{paired[0]:.2f}-{paired[-1]:.2f}",
                        "samples": samples,
                    }
                )
        finally:
            for process in servers.values():
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(10)
    return {"rows": rows, "rounds": rounds, "seconds": seconds, "connections": connections}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="read-path throughput, middleware vs bare app")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    result = run(args.rounds, args.seconds, args.connections)
    report("read_path", result, result["rows"], COLUMNS)
