"""Replica connections in `forwarder.sqlalchemy`: recycle pooled ones, or do not pool? Measured.

1. Throughput: one-row reads (`engine.connect()` + a SELECT by key, one thread) on a replica-role
   engine, with the pool recycled on position change (checkout event) vs closed on checkin (no
   pool), and SQLAlchemy's own default pool as the reference. The position is either static or
   advances before every read (the recycle strategy's worst case). A and B alternate per round.
2. Pitfall 2 on a real Litestream follower: with one idle connection left in the pool after a
   read, does the follower still apply new transactions, and does the next read see them?

    .venv/bin/python -m bench.replica_pool [--rounds 5 --seconds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine as sa_create_engine, text

from bench.stats import report
from forwarder import Forwarder, MemoryEngine, MemoryLog, Role, Topology, Txid
from forwarder.dev.replication import Follower, Replicator
from forwarder.sqlalchemy import ReplicaPooling, _Binding

COLUMNS = ["position", "strategy", "reads/s (median)", "vs default pool (paired median)"]
STRATEGIES = ("default pool", "recycle", "no pool", "busy pool")
POOLING = {"recycle": ReplicaPooling.RECYCLE, "no pool": ReplicaPooling.NEVER, "busy pool": ReplicaPooling.BUSY}


def replica_forwarder() -> Forwarder:
    engine = MemoryEngine(MemoryLog(), Role.REPLICA, primary_id="p")
    topology = Topology("r", "ams", Role.REPLICA, primary_url="http://127.0.0.1:9", primary_id="p")
    return Forwarder(engine=engine, topology=topology, secret="bench")


def engine_for(strategy: str, database: Path, forwarder: Forwarder) -> Engine:
    engine = sa_create_engine(f"sqlite:///{database}")
    if strategy != "default pool":
        _Binding(engine, forwarder, replica_pooling=POOLING[strategy]).listen()
    return engine


def reads_per_second(engine: Engine, forwarder: Forwarder, seconds: float, advancing: bool) -> float:
    keys = itertools.cycle(range(1, 201))
    position = itertools.count(int(forwarder.tracker.position) + 1)
    done, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            if advancing:
                forwarder.tracker.advance(Txid(next(position)))
            with engine.connect() as conn:
                conn.execute(text("SELECT text FROM items WHERE id = :id"), {"id": next(keys)}).fetchone()
        done += 100
    return done / seconds


def throughput(rounds: int, seconds: float) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        database = Path(tmp) / "app.db"
        with sqlite3.connect(database) as conn:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, text TEXT)")
            conn.executemany("INSERT INTO items (text) VALUES (?)", [(f"item {i}",) for i in range(200)])
        for advancing in (False, True):
            forwarder = replica_forwarder()
            engines = {name: engine_for(name, database, forwarder) for name in STRATEGIES}
            samples: dict[str, list[float]] = {name: [] for name in STRATEGIES}
            for engine in engines.values():
                reads_per_second(engine, forwarder, 0.3, advancing)  # warm up
            for i in range(rounds):
                order = STRATEGIES if i % 2 == 0 else tuple(reversed(STRATEGIES))
                for name in order:
                    samples[name].append(reads_per_second(engines[name], forwarder, seconds, advancing))
            for name in STRATEGIES:
                paired = [b / a for a, b in zip(samples["default pool"], samples[name], strict=True)]
                rows.append(
                    {
                        "position": "advances every read" if advancing else "static",
                        "strategy": name,
                        "reads/s (median)": round(statistics.median(samples[name])),
                        "vs default pool (paired median)": round(statistics.median(paired), 3),
                        "samples": samples[name],
                    }
                )
            for engine in engines.values():
                engine.dispose()
    return rows


async def follower_check(strategy: str, deadline: float = 8.0) -> dict[str, Any]:
    """An idle pooled replica connection vs a real `litestream restore -f`: does replication go on?"""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        primary_db, replica_db = root / "p" / "app.db", root / "r" / "app.db"
        replicator = Replicator(primary_db, root / "store", root / "ls.sock", log_path=root / "replicate.log")
        follower = Follower("r", replica_db, root / "store", log_path=root / "follow.log")
        await replicator.start()
        try:
            with sqlite3.connect(primary_db) as conn:
                conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, text TEXT)")
            target = await replicator.engine.commit_position()
            await follower.start()
            await _until(lambda: (follower.position() or 0) >= target, deadline)
            forwarder = replica_forwarder()
            forwarder.tracker.advance(Txid(follower.position() or 0))
            engine = engine_for(strategy, replica_db, forwarder)
            count = "SELECT count(*) FROM items"
            with engine.connect() as conn:  # leaves an idle connection in the pool (recycle strategy)
                before = conn.execute(text(count)).scalar_one()
            with sqlite3.connect(primary_db) as conn:
                conn.executemany("INSERT INTO items (text) VALUES (?)", [("x",)] * 5)
            target = await replicator.engine.commit_position()
            started = time.monotonic()
            advanced = await _until(lambda: (follower.position() or 0) >= target, deadline)
            caught_up_s = time.monotonic() - started
            forwarder.tracker.advance(Txid(follower.position() or 0))
            with engine.connect() as conn:
                after = conn.execute(text(count)).scalar_one()
            under_load = await _under_read_load(engine, forwarder, follower, replicator, primary_db, deadline)
            engine.dispose()
            return {
                **under_load,
                "strategy": strategy,
                "follower advanced with an idle pooled connection": advanced,
                "seconds to catch up": round(caught_up_s, 3) if advanced else f">{deadline}",
                "rows before/after": f"{before}/{after}",
                "next read fresh": after == before + 5,
            }
        finally:
            await follower.stop()
            await replicator.stop()


async def _under_read_load(
    engine: Engine, forwarder: Forwarder, follower: Follower, replicator: Replicator, primary: Path, deadline: float
) -> dict[str, Any]:
    """Four threads read as fast as they can while the primary commits every 20 ms: does the follower keep up?"""
    stop = threading.Event()
    reads = [0]

    def read() -> None:
        while not stop.is_set():
            forwarder.tracker.advance(Txid(follower.position() or 0))
            with engine.connect() as conn:
                conn.execute(text("SELECT count(*) FROM items")).scalar_one()
            reads[0] += 1

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    lags: list[float] = []
    try:
        with sqlite3.connect(primary) as conn:
            for _ in range(50):
                conn.execute("INSERT INTO items (text) VALUES ('load')")
                conn.commit()
                target = await replicator.engine.commit_position()
                started = time.monotonic()
                if not await _until(lambda target=target: (follower.position() or 0) >= target, deadline):
                    lags.append(float("inf"))
                    break
                lags.append(time.monotonic() - started)
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return {
        "under 4-thread read load: reads": reads[0],
        "follower lag p50/max ms": f"{statistics.median(lags) * 1000:.1f}/{max(lags) * 1000:.1f}",
    }


async def _until(condition: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def run(rounds: int, seconds: float) -> dict[str, Any]:
    rows = throughput(rounds, seconds)
    follower = [asyncio.run(follower_check(s)) for s in ("recycle", "no pool", "busy pool", "default pool")]
    return {"rows": rows, "follower": follower, "rounds": rounds, "seconds": seconds}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="replica pool strategy: recycle on position change vs no pool")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    result = run(args.rounds, args.seconds)
    for row in result["follower"]:
        print(row)
    report("replica_pool", result, result["rows"], COLUMNS)
