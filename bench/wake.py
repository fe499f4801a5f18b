"""Catch-up wake: from the engine's signal to the waiting coroutine resumed.

Our tracker (one inotify watch on Litestream's `-txid` file, a heap of waiters) against the
per-waiter polling the anchors use, at 1 ms (LiteFS proxy), 30 ms (litefs-js) and 50 ms
(fly_postgres), alternated round by round in one run, with the floor under all of them: a bare
inotify watch read by one coroutine (what the kernel and the VM take to deliver the event).
Also: idle CPU with 10,000 waiters, and how long one position change takes to wake all 10,000.

    .venv/bin/python -m bench.wake [--rounds 200]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.stats import LATENCY, report, summary_ms
from forwarder.engines.base import Role
from forwarder.engines.litestream import LitestreamEngine
from forwarder.engines.memory import MemoryEngine, MemoryLog
from forwarder.tracker import Tracker
from forwarder.txid import Txid

if TYPE_CHECKING:
    from asyncinotify import Inotify

# Every mechanism waits the same random 2-22 ms before the signal (no phase lock with the pollers,
# and the same idle time: on this VM an idle vCPU takes longer to wake for an event).
IDLE = 0.02


def write_txid(path: Path, txid: int) -> float:
    """Replace the file the way Litestream does (tmp + rename); return the time of the rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{txid:016x}\n")
    moment = time.perf_counter()
    os.replace(tmp, path)
    return moment


@asynccontextmanager
async def watched_txid_file(initial: int | None = None) -> AsyncIterator[tuple[Path, Tracker]]:
    """A replica's `-txid` file in a temp dir, watched by a real LitestreamEngine feeding a Tracker."""
    with tempfile.TemporaryDirectory() as tmp:
        database = Path(tmp) / "app.db"
        path = Path(f"{database}-txid")
        if initial is not None:
            write_txid(path, initial)
        engine = LitestreamEngine(database, Role.REPLICA)
        tracker = Tracker()
        # Looked up at each call, so wake_all() can time advance() by replacing it.
        engine.on_position(lambda position: tracker.advance(position))
        await engine.start()
        tracker.reset(engine.position)
        try:
            yield path, tracker
        finally:
            await engine.aclose()


@asynccontextmanager
async def bare_inotify() -> AsyncIterator[tuple[Path, Inotify]]:
    """The floor under the tracker: a `-txid` file in its own temp dir and one raw inotify watch on it."""
    from asyncinotify import Inotify, Mask

    with tempfile.TemporaryDirectory() as tmp, Inotify() as inotify:
        path = Path(tmp) / "app.db-txid"
        inotify.add_watch(Path(tmp), Mask.MOVED_TO)
        yield path, inotify


def read_txid(path: Path) -> int:
    try:
        return int(path.read_text()[:16], 16)
    except (FileNotFoundError, ValueError):
        return 0


async def poll_waiter(path: Path, txid: int, interval: float) -> float:
    while read_txid(path) < txid:
        await asyncio.sleep(interval)
    return time.perf_counter()


async def measure(path: Path, txid: int, waiter: Callable[[], Coroutine[Any, Any, float]], jitter: float) -> float:
    task: asyncio.Task[float] = asyncio.create_task(waiter())
    await asyncio.sleep(0.002 + random.uniform(0, jitter) if jitter else 0)
    signalled = write_txid(path, txid)
    resumed: float = await asyncio.wait_for(task, 5)
    return resumed - signalled


async def wake_latencies(rounds: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"tracker (inotify)": [], "poll 1 ms": [], "poll 30 ms": [], "poll 50 ms": []}
    results["tracker (memory signal)"] = []
    results["floor: bare inotify, no tracker"] = []
    async with watched_txid_file() as (path, tracker), bare_inotify() as (floor_path, inotify):
        log = MemoryLog()
        memory = MemoryEngine(log, Role.REPLICA)
        memory_tracker = Tracker()
        memory.on_position(memory_tracker.advance)
        txid = 0
        for _ in range(rounds):
            order = list(results)
            random.shuffle(order)  # alternate A and B so drift on the shared machine hits all alike
            for name in order:
                txid += 1
                if name == "tracker (inotify)":

                    async def event(t: int = txid) -> float:
                        await tracker.wait_for(Txid(t), timeout=5)
                        return time.perf_counter()

                    results[name].append(await measure(path, txid, event, IDLE))
                elif name == "floor: bare inotify, no tracker":

                    async def moved(expected: str = floor_path.name) -> float:
                        while True:
                            event = await inotify.get()
                            if event.name is not None and str(event.name) == expected:
                                return time.perf_counter()

                    results[name].append(await measure(floor_path, txid, moved, IDLE))
                elif name == "tracker (memory signal)":
                    log.commit()
                    waiter = asyncio.create_task(memory_tracker.wait_for(log.head, timeout=5))
                    await asyncio.sleep(0.002 + random.uniform(0, IDLE))
                    signalled = time.perf_counter()
                    memory.apply()
                    await waiter
                    results[name].append(time.perf_counter() - signalled)
                else:
                    interval = {"poll 1 ms": 0.001, "poll 30 ms": 0.03, "poll 50 ms": 0.05}[name]

                    def poller(t: int = txid, i: float = interval) -> Coroutine[Any, Any, float]:
                        return poll_waiter(path, t, i)

                    results[name].append(await measure(path, txid, poller, IDLE))
    return results


async def hot_wake(rounds: int) -> list[float]:
    """Tracker over inotify with no idle gap before the signal (a busy node)."""
    async with watched_txid_file() as (path, tracker):
        out = []
        for txid in range(1, rounds + 1):

            async def event(t: int = txid) -> float:
                await tracker.wait_for(Txid(t), timeout=5)
                return time.perf_counter()

            out.append(await measure(path, txid, event, 0.0))
        return out


class GcClock:
    """Seconds the garbage collector has run since `install()` (from `gc.callbacks`)."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._started

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


async def wake_all(path: Path, tracker: Tracker, txid: int, gc_clock: GcClock) -> dict[str, float]:
    """One position change with 10,000 waiters, timed by part: delivery, advance(), resumption, GC."""
    woken: list[float] = []
    spans: list[tuple[float, float]] = []

    async def waiter() -> None:
        await tracker.wait_for(Txid(txid), timeout=60)
        woken.append(time.perf_counter())

    tasks = [asyncio.create_task(waiter()) for _ in range(10_000)]
    await asyncio.sleep(0.1)
    advance = tracker.advance

    def timed_advance(position: Txid) -> None:
        started = time.perf_counter()
        advance(position)
        spans.append((started, time.perf_counter()))

    tracker.advance = timed_advance  # type: ignore[method-assign]
    all_done = asyncio.gather(*tasks)  # before the signal: gather's own setup is O(n)
    try:
        gc_before = gc_clock.total
        signalled = write_txid(path, txid)
        await all_done
        gc_ms = (gc_clock.total - gc_before) * 1000
    finally:
        del tracker.advance
    begun, ended = spans[0]
    return {
        "total_ms": (max(woken) - signalled) * 1000,
        "delivery_ms": (begun - signalled) * 1000,  # inotify event to the engine calling advance()
        "advance_ms": (ended - begun) * 1000,  # the tracker: heap pops and set_result on 10,000 futures
        "resume_ms": (max(woken) - ended) * 1000,  # asyncio resuming 10,000 tasks
        "gc_ms": gc_ms,  # of the total, time in the garbage collector
    }


async def event_floor() -> float:
    """asyncio's own floor: ms for one bare asyncio.Event to resume 10,000 tasks."""
    event = asyncio.Event()
    resumed: list[float] = []

    async def on_event() -> None:
        await event.wait()
        resumed.append(time.perf_counter())

    tasks = [asyncio.create_task(on_event()) for _ in range(10_000)]
    await asyncio.sleep(0.1)
    all_done = asyncio.gather(*tasks)
    signalled = time.perf_counter()
    event.set()
    await all_done
    return (max(resumed) - signalled) * 1000


async def ten_thousand(idle_seconds: float, repeats: int = 15) -> dict[str, float]:
    """Idle CPU with 10,000 waiters (ours vs 10,000 pollers at 50 ms); time to wake all of ours, by part.

    Waking all is repeated `repeats` times, alternating with asyncio's floor; medians and maxima.
    """
    out: dict[str, float] = {}
    async with watched_txid_file(initial=1) as (path, tracker):
        idle = [asyncio.create_task(tracker.wait_for(Txid(2), timeout=60)) for _ in range(10_000)]
        await asyncio.sleep(0.2)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(idle_seconds)
        out["tracker_idle_cpu_percent"] = round(100 * (time.process_time() - cpu0) / (time.perf_counter() - wall0), 2)
        write_txid(path, 2)
        await asyncio.gather(*idle)

        parts: list[dict[str, float]] = []
        floors: list[float] = []
        with GcClock() as gc_clock:
            for i in range(repeats):
                parts.append(await wake_all(path, tracker, 3 + i, gc_clock))
                floors.append(await event_floor())
        for key in parts[0]:
            values = sorted(part[key] for part in parts)
            out[f"tracker_wake_all_10000_{key.removesuffix('_ms')}_median_ms"] = round(statistics.median(values), 2)
        out["tracker_wake_all_10000_ms"] = out.pop("tracker_wake_all_10000_total_median_ms")
        out["tracker_wake_all_10000_max_ms"] = round(max(part["total_ms"] for part in parts), 2)
        out["asyncio_event_floor_10000_ms"] = round(statistics.median(floors), 2)
        out["wake_all_repeats"] = repeats
        path_txid = 3 + repeats

        pollers = [asyncio.create_task(poll_waiter(path, path_txid, 0.05)) for _ in range(10_000)]
        await asyncio.sleep(0.2)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(idle_seconds)
        busy = time.process_time() - cpu0
        out["poll50_idle_cpu_percent"] = round(100 * busy / (time.perf_counter() - wall0), 2)
        all_done = asyncio.gather(*pollers)
        signalled = write_txid(path, path_txid)
        await all_done
        out["poll50_wake_all_10000_ms"] = round((time.perf_counter() - signalled) * 1000, 2)
    return out


async def main(rounds: int, idle_seconds: float) -> dict[str, object]:
    latencies = await wake_latencies(rounds)
    latencies["tracker (inotify), busy node: no idle gap"] = await hot_wake(rounds)
    rows = [
        {"mechanism": name, **summary_ms(values), "samples_ms": [round(v * 1000, 4) for v in values]}
        for name, values in latencies.items()
    ]
    many = await ten_thousand(idle_seconds)
    return {"wake": rows, "ten_thousand_waiters": many}


def ten_thousand_on_uvloop(idle_seconds: float) -> dict[str, float] | None:
    """`ten_thousand()` on uvloop, the loop uvicorn picks when `uvicorn[standard]` is installed
    (forwarder's `server` extra, the Dockerfile, `forwarder dev`); None without uvloop."""
    try:
        import uvloop
    except ImportError:
        return None
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(ten_thousand(idle_seconds))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=2.0)
    args = parser.parse_args()
    result = asyncio.run(main(args.rounds, args.idle_seconds))
    result["ten_thousand_waiters_uvloop"] = ten_thousand_on_uvloop(args.idle_seconds)
    print(f"- on uvloop: {result['ten_thousand_waiters_uvloop']}")
    for key, value in result["ten_thousand_waiters"].items():  # type: ignore[attr-defined]
        print(f"- {key}: {value}")
    report("wake", result, result["wake"], ["mechanism", *LATENCY])  # type: ignore[arg-type]
