"""What the primary pays to learn a txid that covers a commit, per candidate, on real Litestream.

One database, `litestream replicate` with the dev cluster's config, one writer committing rows
(spaced 0-4 ms at random, so commits land anywhere relative to Litestream's 10 ms monitor). After
each commit, one candidate is asked, the candidates taking turns (A/B/C alternating per write):

- `POST /sync wait=true`: the old `commit_position()`;
- `POST /sync wait=false`: the issue's first candidate (timing only: it does not cover);
- `GET /txid`, `GET /debug/sync-status`: bare control-socket round trips (timing only);
- `covering check`: `LitestreamEngine.commit_position()` now (`litestream_position`, the exact
  answer a forwarded write gets), with how often each branch answered;
- `prompt`: `LitestreamEngine.promise_position()` (a direct write's answer: the newest L0 txid or
  `newest + 2`, kept by `litestream_keeper`), as the engine runs it: sync-status once when its
  previous call was over `QUIET_GAP` ago (`newest + 1` when no sync runs), which depends on how
  fast this machine goes round the candidates; `prompt from files` never asks, as on a busy primary.

Every txid the covering check or the prompt answer returns is then verified: once Litestream has
written that txid's LTX file, its header must hold the commit's WAL end (a violation would break
read-your-writes); and every such file must come to exist (else a replica would wait it out).

    .venv/bin/python -m bench.commit_position [--writes 300]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stats import LATENCY, report, summary_ms
from forwarder import Role
from forwarder.engines.litestream import QUIET_GAP, LitestreamEngine, litestream_binary, replicate_config
from forwarder.engines.litestream_config import FILE_INTERVALS
from forwarder.engines.litestream_files import latest_l0, wal_end
from forwarder.engines.litestream_position import CoveringCheck

COLUMNS = ["candidate", *LATENCY, "covers the commit"]


def _ltx_header(ltx_dir: Path, txid: int) -> tuple[bytes, int] | None:
    for path in ltx_dir.glob(f"*-{txid:016x}.ltx"):
        raw = path.read_bytes()[:0x48]
        return raw[0x40:0x48], int.from_bytes(raw[0x30:0x38], "big") + int.from_bytes(raw[0x38:0x40], "big")
    return None


async def measure(writes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        db = base / "primary.db"
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("PRAGMA journal_mode=wal")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        config = base / "litestream.yml"
        # L0 kept for the whole run: every answer is checked against the LTX file of its txid at the end.
        keep = dataclasses.replace(FILE_INTERVALS, l0_retention=3600.0, snapshot=86400.0)
        config.write_text(replicate_config(db, base / "replica", base / "ls.sock", keep))
        log = (base / "litestream.log").open("wb")
        process = subprocess.Popen([litestream_binary(), "replicate", "-config", str(config)], stdout=log, stderr=log)
        engine = LitestreamEngine(db, Role.PRIMARY, socket_path=base / "ls.sock")
        try:
            deadline = time.monotonic() + 20
            while not (base / "ls.sock").exists() or latest_l0(CoveringCheck(db).ltx_dir) is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("litestream replicate did not start")
                await asyncio.sleep(0.05)
            await engine.start()
            path = {"path": str(db)}
            request = engine._request  # the engine's own control-socket client: same cost as in production

            async def files_only() -> int:
                engine.quiet_gap = float("inf")  # as under load: no sync-status, `newest + 2` when not held
                try:
                    return await engine.promise_position()
                finally:
                    engine.quiet_gap = QUIET_GAP

            candidates: dict[str, Any] = {
                "POST /sync wait=true (old commit_position)": lambda: request(
                    "POST", "/sync", payload={**path, "wait": True}
                ),
                "POST /sync wait=false": lambda: request("POST", "/sync", payload={**path, "wait": False}),
                "GET /txid": lambda: request("GET", "/txid", params=path),
                "GET /debug/sync-status": lambda: request("GET", "/debug/sync-status", params=path),
                "covering check (new commit_position)": engine.commit_position,
                "prompt (promise_position)": engine.promise_position,
                "prompt from files (promise_position, never sync-status)": files_only,
            }
            times: dict[str, list[float]] = {name: [] for name in candidates}
            names = list(candidates)
            check = CoveringCheck(db)
            answers: dict[str, list[tuple[bytes, int, int]]] = {
                name: [] for name in candidates if name.startswith(("covering", "prompt"))
            }
            for i in range(writes * len(names)):
                await asyncio.sleep(random.uniform(0, 0.004))
                conn.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
                name = names[i % len(names)]
                end = wal_end(db)
                started = time.perf_counter()
                result = await candidates[name]()
                times[name].append(time.perf_counter() - started)
                if name in answers and end is not None:
                    answers[name].append((end.salts, end.end, int(result)))
            assert engine.covering is not None
            branches = engine.covering.outcomes  # the exact and the prompt answer share the check
            # Verify every answer against the LTX file that carries its txid, once it exists.
            deadline = time.monotonic() + 5
            while engine.keeper.running and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            checked: dict[str, tuple[int, int]] = {}
            for name, given in answers.items():
                violations = unverified = 0
                for salts, end_offset, txid in given:
                    header = _ltx_header(check.ltx_dir, txid)
                    if header is None:
                        unverified += 1
                    elif header[0] == salts and header[1] < end_offset:
                        violations += 1
                checked[name] = (violations, unverified)
            rows = []
            for name, values in times.items():
                row: dict[str, Any] = {"candidate": name, **summary_ms(values)}
                if name.startswith("POST /sync wait=true"):
                    row["covers the commit"] = "yes (forces a sync)"
                elif name in answers:
                    violations, unverified = checked[name]
                    row["covers the commit"] = (
                        f"{len(answers[name]) - violations - unverified} verified, {violations} violations, "
                        f"{unverified} never made or pruned"
                    )
                else:
                    row["covers the commit"] = "no (timing only)"
                rows.append(row)
            rows.append(
                {
                    "candidate": "branches (covering check and prompt)",
                    "covers the commit": ", ".join(f"{k}: {v}" for k, v in branches.items())
                    + f"; the keeper wrote {engine.keeper.bumps} times",
                }
            )
            total = sum(violations for violations, _ in checked.values())
            return {
                "rows": rows,
                "writes": writes,
                "violations": total,
                "checked": checked,
                "branches": dict(branches),
            }
        finally:
            await engine.aclose()
            process.terminate()
            process.wait(10)
            log.close()
            conn.close()


def run(writes: int) -> dict[str, Any]:
    return asyncio.run(measure(writes))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="cost of learning a covering txid on a Litestream primary")
    parser.add_argument("--writes", type=int, default=300, help="writes per candidate")
    args = parser.parse_args()
    result = run(args.writes)
    report("commit_position", result, result["rows"], COLUMNS)
