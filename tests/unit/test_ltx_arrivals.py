"""Waiting for the local L0 to reach a txid: told by inotify, else looked at (never in a busy loop, uvloop included)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from forwarder.engines.ltx_arrivals import LtxArrivals

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return "asyncio", {"use_uvloop": request.param == "uvloop"}


class Files:
    """A stand-in for the L0 directory: its newest txid, and how often anyone looked."""

    def __init__(self, newest: int | None) -> None:
        self.newest = newest
        self.looks = 0

    def __call__(self) -> int | None:
        self.looks += 1
        return self.newest


async def test_a_txid_already_there_is_reached_without_waiting() -> None:
    files = Files(7)
    arrivals = LtxArrivals(files)
    assert await arrivals.reached(7, 1) and await arrivals.reached(3, 1)
    assert files.looks == 2 and arrivals.waiting == 0


async def test_every_waiter_wakes_once_the_newest_reaches_its_txid() -> None:
    files = Files(10)
    arrivals = LtxArrivals(files)
    waiters = [asyncio.create_task(arrivals.reached(txid, 2)) for txid in (11, 11, 12, 13)]
    await asyncio.sleep(0.01)
    assert arrivals.waiting == 4
    files.newest = 12
    done, pending = await asyncio.wait(waiters, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.sleep(0.01)
    assert [task.done() for task in waiters] == [True, True, True, False]
    files.newest = 13
    assert all(await asyncio.gather(*waiters))
    assert arrivals.waiting == 0


async def test_a_waiter_that_times_out_is_forgotten_and_the_looking_stops() -> None:
    files = Files(None)  # the files cannot tell (or Litestream stopped syncing)
    arrivals = LtxArrivals(files)
    assert not await arrivals.reached(11, 0.05)
    assert arrivals.waiting == 0
    await asyncio.sleep(0.01)
    looks = files.looks
    await asyncio.sleep(0.03)
    assert files.looks == looks  # nobody waits: nothing looks


async def test_waiting_looks_about_once_a_millisecond_not_in_a_busy_loop() -> None:
    # On uvloop a sleep under 1 ms returns at once: a look loop built on one spins a core.
    files = Files(10)
    arrivals = LtxArrivals(files)
    assert not await arrivals.reached(11, 0.1)
    assert 10 <= files.looks <= 150, files.looks


async def test_closing_stops_the_look_and_the_waiters_time_out() -> None:
    files = Files(10)
    arrivals = LtxArrivals(files)
    waiter = asyncio.create_task(arrivals.reached(11, 0.1))
    await asyncio.sleep(0.01)
    await arrivals.aclose()
    looks = files.looks
    assert not await waiter
    assert files.looks == looks


def land(directory: Path, txid: int) -> None:
    """What Litestream does: write the file under a temporary name, then rename it into place."""
    name = f"{txid:016x}-{txid:016x}.ltx"
    (directory / f"{name}.tmp").write_bytes(b"LTX1")
    os.rename(directory / f"{name}.tmp", directory / name)


async def test_with_inotify_a_waiter_wakes_when_its_file_lands_and_nothing_looks_meanwhile(tmp_path: Path) -> None:
    files = Files(10)
    arrivals = LtxArrivals(files, tmp_path)
    waiters = [asyncio.create_task(arrivals.reached(txid, 2)) for txid in (11, 12)]
    await asyncio.sleep(0.05)
    assert arrivals.watching and files.looks == 2  # one look each on arrival, none while they wait
    land(tmp_path, 11)
    await asyncio.wait_for(waiters[0], 0.5)
    assert not waiters[1].done()
    (tmp_path / "0000000000000012-0000000000000012.ltx.tmp").write_bytes(b"")  # not landed yet
    await asyncio.sleep(0.02)
    assert not waiters[1].done()
    land(tmp_path, 13)  # several syncs in one batch of records: the newest counts
    assert await asyncio.wait_for(waiters[1], 0.5)
    assert files.looks == 2
    await arrivals.aclose()


async def test_without_the_directory_yet_it_looks_and_watches_once_it_exists(tmp_path: Path) -> None:
    files = Files(10)
    directory = tmp_path / "ltx" / "0"
    arrivals = LtxArrivals(files, directory)
    waiter = asyncio.create_task(arrivals.reached(11, 2))
    await asyncio.sleep(0.02)
    assert not arrivals.watching and files.looks > 1  # looking every millisecond meanwhile
    files.newest = 11
    assert await asyncio.wait_for(waiter, 0.5)
    directory.mkdir(parents=True)
    waiter = asyncio.create_task(arrivals.reached(12, 2))
    await asyncio.sleep(0.02)
    assert arrivals.watching
    land(directory, 12)
    assert await asyncio.wait_for(waiter, 0.5)
    await arrivals.aclose()


async def test_when_the_directory_is_removed_the_waiters_are_looked_after_by_looking(tmp_path: Path) -> None:
    files = Files(10)
    directory = tmp_path / "0"
    directory.mkdir()
    arrivals = LtxArrivals(files, directory)
    waiter = asyncio.create_task(arrivals.reached(11, 2))
    await asyncio.sleep(0.02)
    assert arrivals.watching
    directory.rmdir()  # Litestream starting over
    await asyncio.sleep(0.02)
    assert not arrivals.watching and not waiter.done()
    files.newest = 11
    assert await asyncio.wait_for(waiter, 0.5)
    await arrivals.aclose()
