"""SQLModel read throughput: the app on a replica through `forwarder.sqlalchemy`, divided by the bare app.

The same FastAPI + SQLModel app (bench/apps/sqlmodel_app.py) runs twice: as a forwarder replica
(`forwarder.sqlalchemy.create_engine`: read-only connections, pooled while busy, inside
`ForwarderMiddleware`) and bare on a single node (SQLModel's `create_engine`, SQLAlchemy's default
pool). Rounds as in bench/read_path.py: each round one `wrk` per server loads both at the same
time (which starts first alternating), so each A/B pair sees the same moment of the shared
machine, and rounds go on until the spread of the median paired ratio is under ±0.03. Target:
>= 0.9.

    .venv/bin/python -m bench.sqlmodel_read [--rounds 8 --max-rounds 30 --seconds 2 --connections 16]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.read_path import COLUMNS, paired_rounds
from bench.servers import uvicorn_server
from bench.stats import report

APP = "bench.apps.sqlmodel_app:app"


def make_database(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE book (id INTEGER PRIMARY KEY, title VARCHAR NOT NULL, author VARCHAR NOT NULL)")
        conn.executemany("INSERT INTO book (title, author) VALUES (?, ?)", [(f"t{i}", "a") for i in range(200)])
    conn.close()
    Path(f"{path}-txid").write_text(f"{1:016x}\n")  # what a follower leaves: the replica's position


def run(rounds: int, seconds: float, connections: int, max_rounds: int = 30) -> dict[str, Any]:
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
        rows = [paired_rounds(urls, path, rounds, max_rounds, seconds, connections) for path in ("/books/7", "/books/")]
    return {"rows": rows, "rounds": rounds, "seconds": seconds, "connections": connections}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="SQLModel app read throughput: forwarder replica vs bare")
    parser.add_argument("--rounds", type=int, default=8, help="at least this many A/B rounds")
    parser.add_argument("--max-rounds", type=int, default=30, help="at most this many, until the spread is small")
    parser.add_argument("--seconds", type=float, default=2)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    result = run(args.rounds, args.seconds, args.connections, args.max_rounds)
    report("sqlmodel_read", result, result["rows"], COLUMNS)
