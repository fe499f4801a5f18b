"""SQLModel read throughput: the app on a replica through `forwarder.sqlalchemy`, divided by the bare app.

The same FastAPI + SQLModel app (bench/apps/sqlmodel_app.py) runs twice: as a forwarder replica
(`forwarder.sqlalchemy.create_engine`: a fresh read-only connection per checkout, inside
`ForwarderMiddleware`) and bare on a single node (SQLModel's `create_engine`, SQLAlchemy's default
pool). `wrk` loads one at a time, A and B alternating per round; the ratio of medians and the
median of the per-round ratios are reported. Target: >= 0.9.

    .venv/bin/python -m bench.sqlmodel_read [--rounds 7 --seconds 3 --connections 16]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.read_path import wrk
from bench.servers import uvicorn_server
from bench.stats import report

COLUMNS = [
    "handler",
    "bare req/s (median)",
    "forwarder req/s (median)",
    "ratio of medians",
    "paired ratio (median)",
    "paired ratio (min-max)",
]
APP = "bench.apps.sqlmodel_app:app"


def make_database(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE book (id INTEGER PRIMARY KEY, title VARCHAR NOT NULL, author VARCHAR NOT NULL)")
        conn.executemany("INSERT INTO book (title, author) VALUES (?, ?)", [(f"t{i}", "a") for i in range(200)])
    conn.close()
    Path(f"{path}-txid").write_text(f"{1:016x}\n")  # what a follower leaves: the replica's position


def run(rounds: int, seconds: float, connections: int) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("the SQLModel read benchmark needs wrk: apt-get install wrk")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        database = Path(tmp) / "app.db"
        make_database(database)
        urls = {
            name: stack.enter_context(
                uvicorn_server(APP, {"BENCH_WRAPPED": wrapped, "BENCH_DATABASE": str(database)}, "/books/1")
            )
            for name, wrapped in (("bare", "0"), ("forwarder", "1"))
        }
        rows = []
        for path in ("/books/7", "/books/"):
            samples: dict[str, list[float]] = {"bare": [], "forwarder": []}
            for url in urls.values():
                wrk(url + path, 1, connections)  # warm up
            for i in range(rounds):
                for name in ("bare", "forwarder") if i % 2 == 0 else ("forwarder", "bare"):
                    samples[name].append(wrk(urls[name] + path, seconds, connections))
            bare, ours = statistics.median(samples["bare"]), statistics.median(samples["forwarder"])
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
    return {"rows": rows, "rounds": rounds, "seconds": seconds, "connections": connections}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="SQLModel app read throughput: forwarder replica vs bare")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    result = run(args.rounds, args.seconds, args.connections)
    report("sqlmodel_read", result, result["rows"], COLUMNS)
