"""What forwarder costs the primary: the same write app with and without it, at 1, 8 and 32 connections.

Setups, all started for the whole benchmark, each loaded in turn by one `wrk` thread of POSTs, the
order rotating every round, all on the server stack the cluster's nodes run (`forwarder dev`:
uvloop + httptools; the baselines too, so the ratio is forwarder's and not the HTTP parser's). While
one setup is loaded every other one is paused (SIGSTOP, its followers through their supervisors):
each idle cluster's Litestream processes poll every 10 ms, and six of them loaded the 2 cores
enough to swing even the `no txid` floor between 0.6 and 1.15 of `litestream` from row to row.

- `bare`: `bench/apps/write_app.py` without forwarder (`BENCH_BARE=1`) on its own database;
- `litestream`: the same bare app, its database replicated by `litestream replicate` (the dev
  cluster's config) to a directory one `restore -f` follower reads: a single-node app with
  Litestream and no forwarder;
- `forwarder`: the same app inside `ForwarderMiddleware` as the primary of a `forwarder dev`
  cluster with one replica (same Litestream processes), `promise_position()` giving the txid
  (from local files: the newest L0 txid, or `newest + 2` kept by `litestream_keeper`);
- `forwarder, status`: the same, asking sync-status once for every direct write (what a quiet
  primary does, `QUIET_GAP`): `newest + 1` when no sync is active, else `newest + 2`;
- `forwarder, exact`: the same, with the covering check that waits out an active sync (what a
  forwarded write gets, and every write before `promise_position`);
- `forwarder, POST /sync`: the same, with every write's txid from `POST /sync` (before that);
- `forwarder, no txid`: the same, answering txid 1 without asking Litestream. Not correct, not a
  candidate: the floor that shows how much of the primary's cost is the txid.

The target: forwarder / litestream throughput >= 0.9 and p50 added < 1 ms, at every concurrency.
Each ratio is the median over rounds of that round's ratio (the two setups loaded seconds apart),
which a load that drifts through the run moves less than a ratio of medians; `scripts/bench` runs
`DEFAULT_SETUPS`, the candidates it no longer needs to compare (`status`, `POST /sync`) on request.
`--setups` runs fewer forwarder setups (a shorter run); `bare`, `litestream` and `forwarder` always
run. `_litestream_seq` bumps are counted per forwarder setup: Litestream's after its checkpoints,
and the keeper's.

    .venv/bin/python -m bench.primary_cost [--rounds 3 --seconds 2] [--setups "forwarder, exact" ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sqlite3
import statistics
import tempfile
from collections.abc import Callable
from contextlib import AsyncExitStack, closing
from functools import partial
from pathlib import Path
from typing import Any

from bench.local_cluster import local_cluster, pause_cluster
from bench.servers import SERVER_PIDS, uvicorn_server
from bench.stats import report, run_median
from bench.write_throughput import CONCURRENCY, wrk
from forwarder.dev import Cluster
from forwarder.dev.replication import Follower, Replicator

CLUSTERS: dict[str, dict[str, str]] = {
    "forwarder": {},
    "forwarder, status": {"BENCH_COMMIT": "status"},
    "forwarder, exact": {"BENCH_COMMIT": "exact"},
    "forwarder, POST /sync": {"BENCH_COMMIT": "sync"},
    "forwarder, no txid": {"BENCH_COMMIT": "none"},
}
SETUPS = ("bare", "litestream", *CLUSTERS)
DEFAULT_SETUPS = ("bare", "litestream", "forwarder", "forwarder, exact", "forwarder, no txid")
"""What `scripts/bench` runs: the target's two sides, what a write a replica waits on costs, and the floor."""
SHORT = {"forwarder, status": "status", "forwarder, exact": "exact", "forwarder, POST /sync": "POST /sync"}
SHORT["forwarder, no txid"] = "no txid"


def columns(setups: tuple[str, ...] = SETUPS) -> list[str]:
    others = [s for s in setups if s in CLUSTERS and s != "forwarder"]
    return [
        "connections",
        *(f"{setup} req/s" for setup in setups),
        "forwarder / litestream",
        "forwarder p50 added ms",
        *(f"{SHORT[s]} / litestream" for s in others),
        *(f"{SHORT[s]} p50 added ms" for s in others),
        "litestream / bare",
        f"p50 ms ({', '.join(SHORT.get(s, s) for s in setups)})",
        "load",
    ]


COLUMNS = columns()


async def measure(rounds: int, seconds: float, setups: tuple[str, ...] = SETUPS) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        async with AsyncExitStack() as stack:
            urls: dict[str, str] = {}
            bare_db = base / "bare" / "app.db"
            bare_db.parent.mkdir()
            urls["bare"] = stack.enter_context(
                uvicorn_server(
                    "bench.apps.write_app:app",
                    {"BENCH_BARE": "1", "BENCH_DATABASE": str(bare_db)},
                    "/",
                    like_nodes=True,
                )
            )
            ls_base = base / "litestream"
            replicator = Replicator(
                ls_base / "app.db", ls_base / "replica", ls_base / "ls.sock", log_path=base / "replicate.log"
            )
            await replicator.start()
            stack.push_async_callback(replicator.stop)
            env = {"BENCH_BARE": "1", "BENCH_DATABASE": str(ls_base / "app.db")}
            urls["litestream"] = stack.enter_context(
                uvicorn_server("bench.apps.write_app:app", env, "/", like_nodes=True)
            )
            follower = Follower(
                "follower", ls_base / "follower" / "app.db", ls_base / "replica", log_path=base / "f.log"
            )
            await follower.start()
            stack.push_async_callback(follower.stop)
            clusters: dict[str, Cluster] = {}
            for setup in setups:
                if setup in CLUSTERS:
                    clusters[setup] = await stack.enter_async_context(local_cluster(1, env=CLUSTERS[setup]))
                    urls[setup] = clusters[setup].primary.url
            pauses = _pausers(setups, urls, clusters, replicator, follower)
            for _, resume in pauses.values():
                stack.callback(resume)  # before anything is stopped, whatever happens (stop is LIFO)
            for setup in setups:
                pauses[setup][0]()

            async def loaded(setup: str, connections: int, seconds: float) -> dict[str, Any]:
                pauses[setup][1]()  # the others stay paused: only this setup and wrk run
                await asyncio.sleep(0.2)  # its timers and its follower catch up on the time it was stopped
                try:
                    return await wrk([urls[setup]], connections, seconds)
                finally:
                    pauses[setup][0]()

            for setup in setups:  # warm up
                await loaded(setup, 2, 1)
            for setup in setups:  # resumed while their files are read: a stopped writer could hold a lock
                pauses[setup][1]()
            seq_before = {setup: _seq(on) for setup, on in clusters.items()}
            for setup in setups:
                pauses[setup][0]()
            rows = []
            for connections in CONCURRENCY:
                runs: dict[str, list[dict[str, Any]]] = {setup: [] for setup in setups}
                load = os.getloadavg()[0]
                for i in range(rounds):
                    order = setups[i % len(setups) :] + setups[: i % len(setups)]
                    for setup in order:
                        runs[setup].append(await loaded(setup, connections, seconds))
                rows.append(cost_row(connections, runs, load, setups))
            for setup in setups:
                pauses[setup][1]()  # resumed to read their files
            # Litestream bumps `_litestream_seq` after its checkpoints, the keeper when it makes a promise exist.
            bumps = {setup: _seq(on) - seq_before[setup] for setup, on in clusters.items()}
            return {
                "rows": rows,
                "rounds": rounds,
                "seconds": seconds,
                "setups": list(setups),
                "litestream_seq_bumps": bumps,
            }


Toggle = Callable[[], None]


def _pausers(
    setups: tuple[str, ...],
    urls: dict[str, str],
    clusters: dict[str, Cluster],
    replicator: Replicator,
    follower: Follower,
) -> dict[str, tuple[Toggle, Toggle]]:
    """(pause, resume) for each setup: SIGSTOP/SIGCONT of its processes, followers through their supervisors."""

    def signals(pids: list[int | None], followers: list[Callable[[bool], None]]) -> tuple[Toggle, Toggle]:
        def send(sig: signal.Signals, pause: bool) -> None:
            for pid in pids:
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            for follow in followers:
                follow(pause)

        return (lambda: send(signal.SIGSTOP, True)), (lambda: send(signal.SIGCONT, False))

    out: dict[str, tuple[Toggle, Toggle]] = {}
    for setup in setups:
        if setup == "bare":
            out[setup] = signals([SERVER_PIDS[urls[setup]]], [])
        elif setup == "litestream":
            pids = [SERVER_PIDS[urls[setup]], replicator.process.pid if replicator.process else None]
            out[setup] = signals(pids, [lambda pause: follower.pause() if pause else follower.resume()])
        else:
            out[setup] = (partial(pause_cluster, clusters[setup], True), partial(pause_cluster, clusters[setup], False))
    return out


def _seq(cluster: Cluster) -> int:
    with closing(sqlite3.connect(f"file:{cluster.replicator.database}?mode=ro", uri=True, timeout=5)) as db:
        row = db.execute("SELECT max(seq) FROM _litestream_seq").fetchone()
    return int(row[0] or 0)


def cost_row(
    connections: int, runs: dict[str, list[dict[str, Any]]], load: float, setups: tuple[str, ...] = SETUPS
) -> dict[str, Any]:
    """One table row from each setup's wrk runs (one a round, in order): medians, and ratios paired by round."""
    median = partial(run_median, runs)

    rps = {setup: median(setup, "rps") for setup in setups}
    p50 = {setup: median(setup, "p50_us") / 1000 for setup in setups}

    def paired(setup: str, baseline: str) -> float:
        pairs = zip(runs[setup], runs[baseline], strict=True)
        return round(float(statistics.median(ours["rps"] / theirs["rps"] for ours, theirs in pairs)), 3)

    row: dict[str, Any] = {"connections": connections, **{f"{s} req/s": round(rps[s]) for s in setups}}
    for setup in setups:
        if setup in CLUSTERS:
            name = SHORT.get(setup, setup)
            row[f"{name} / litestream"] = paired(setup, "litestream")
            row[f"{name} p50 added ms"] = round(p50[setup] - p50["litestream"], 2)
    row["litestream / bare"] = paired("litestream", "bare")
    row[f"p50 ms ({', '.join(SHORT.get(s, s) for s in setups)})"] = ", ".join(f"{p50[s]:.1f}" for s in setups)
    return {**row, "load": round(load, 2), "runs": runs}


def run(rounds: int, seconds: float, setups: tuple[str, ...] = SETUPS) -> dict[str, Any]:
    return asyncio.run(measure(rounds, seconds, setups))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the primary's write throughput with and without forwarder")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2)
    parser.add_argument("--setups", nargs="*", choices=list(CLUSTERS), help="forwarder setups to run (default: all)")
    args = parser.parse_args()
    chosen = (
        "bare",
        "litestream",
        "forwarder",
        *(s for s in CLUSTERS if s in (args.setups or CLUSTERS) and s != "forwarder"),
    )
    result = run(args.rounds, args.seconds, chosen)
    report("primary_cost", result, result["rows"], columns(chosen))
    print(
        "_litestream_seq bumps during the run (keeper writes + Litestream's checkpoints):",
        result["litestream_seq_bumps"],
    )
